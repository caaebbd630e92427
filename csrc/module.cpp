// blendrt._core: the C++ core. The typed Python layers: blendrt/cache/manager.py (the
// page pool's bookkeeping) and blendrt/ops/cpu/ (the CPU kernels).
#include "bindings.h"
#include "kv_cache_core.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() =
      "blendrt C++ core: page allocator, prefix index, sequences, batch metadata, CPU paged "
      "attention";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const blendrt::NotFoundError& e) {
      PyErr_SetString(PyExc_KeyError, e.what());
    }
  });

  blendrt::bind_cache(m);
  blendrt::bind_cpu(m);
}
