// Shared by the binding files of blendrt._core (csrc/module.cpp assembles the module).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

namespace blendrt {

namespace py = pybind11;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

inline I32Array flat(const I32Array& a, const char* what) {
  if (a.ndim() != 1) throw std::invalid_argument(std::string(what) + " must be 1-D");
  return a;
}

// The page pool's bookkeeping: KVCacheCore, siphash128 (csrc/cache/bindings.cpp).
void bind_cache(py::module_& m);
// The CPU kernels: paged_attention_cpu, store_kv_cpu, StorageType (csrc/cpu/bindings.cpp).
void bind_cpu(py::module_& m);

}  // namespace blendrt
