// pybind11 bindings: blendrt._core. The typed Python layer is blendrt/cache/manager.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "batch_metadata.h"
#include "cpu_attention.h"
#include "hash128.h"
#include "kv_cache_core.h"

namespace py = pybind11;
using blendrt::BatchMetadata;
using blendrt::KVCacheCore;

namespace {

using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// Moves a vector into a numpy array without copying; the array owns the buffer.
py::array_t<int32_t> to_numpy(std::vector<int32_t>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<int32_t>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<int32_t>*>(p); });
  return py::array_t<int32_t>(shape, heap->data(), owner);
}

I32Array flat(const I32Array& a, const char* what) {
  if (a.ndim() != 1) throw std::invalid_argument(std::string(what) + " must be 1-D");
  return a;
}

py::array_t<int32_t> vec_to_numpy(const std::vector<int32_t>& v) {
  py::array_t<int32_t> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

py::dict batch_to_dict(BatchMetadata&& md) {
  py::dict d;
  const py::ssize_t b = md.num_seqs;
  const py::ssize_t t = md.num_tokens;
  d["input_ids"] = to_numpy(std::move(md.input_ids), {t});
  d["positions"] = to_numpy(std::move(md.positions), {t});
  d["slot_mapping"] = to_numpy(std::move(md.slot_mapping), {t});
  d["block_tables"] = to_numpy(std::move(md.block_tables), {b, md.block_table_width});
  d["cu_seqlens_q"] = to_numpy(std::move(md.cu_seqlens_q), {b + 1});
  d["cu_seqlens_k"] = to_numpy(std::move(md.cu_seqlens_k), {b + 1});
  d["context_lens"] = to_numpy(std::move(md.context_lens), {b});
  d["logits_indices"] = to_numpy(std::move(md.logits_indices), {b});
  d["max_query_len"] = md.max_query_len;
  d["max_context_len"] = md.max_context_len;
  return d;
}

}  // namespace

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

  m.def(
      "siphash128",
      [](py::bytes data, uint64_t k0, uint64_t k1) {
        const std::string s = data;
        const blendrt::Hash128 h = blendrt::siphash128(s.data(), s.size(), {k0, k1});
        return py::make_tuple(h.lo, h.hi);
      },
      py::arg("data"), py::arg("k0"), py::arg("k1"),
      "SipHash-2-4 with 128-bit output; returns (low 64 bits, high 64 bits).");

  m.def(
      "paged_attention_cpu",
      [](uintptr_t out, uintptr_t q, uintptr_t k_cache, uintptr_t v_cache, int64_t num_pages,
         int64_t page_stride, int64_t token_stride, int64_t head_stride,
         const I32Array& block_tables, const I32Array& cu_seqlens_q,
         const I32Array& context_lens, const I32Array& seq_ids, int32_t num_q_heads,
         int32_t num_kv_heads, int32_t head_dim, int32_t tokens_per_page, float scale,
         int32_t dtype, int32_t num_threads) {
        if (block_tables.ndim() != 2) throw std::invalid_argument("block_tables must be 2-D");
        const py::ssize_t num_seqs = block_tables.shape(0);
        if (cu_seqlens_q.ndim() != 1 || cu_seqlens_q.size() != num_seqs + 1 ||
            context_lens.ndim() != 1 || context_lens.size() != num_seqs) {
          throw std::invalid_argument("cu_seqlens_q must be [B + 1] and context_lens [B]");
        }
        const I32Array ids = flat(seq_ids, "seq_ids");
        if (dtype < 0 || dtype > 2) throw std::invalid_argument("dtype code must be 0, 1 or 2");
        blendrt::PagedAttentionArgs args{
            reinterpret_cast<void*>(out),
            reinterpret_cast<const void*>(q),
            reinterpret_cast<const void*>(k_cache),
            reinterpret_cast<const void*>(v_cache),
            num_pages,
            page_stride,
            token_stride,
            head_stride,
            num_seqs,
            block_tables.data(),
            block_tables.shape(1),
            cu_seqlens_q.data(),
            context_lens.data(),
            ids.data(),
            ids.size(),
            num_q_heads,
            num_kv_heads,
            head_dim,
            tokens_per_page,
            scale,
            static_cast<blendrt::StorageType>(dtype),
            std::max(num_threads, 1)};
        py::gil_scoped_release release;
        blendrt::paged_attention_cpu(args);
      },
      py::arg("out"), py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
      py::arg("num_pages"), py::arg("page_stride"), py::arg("token_stride"),
      py::arg("head_stride"), py::arg("block_tables"), py::arg("cu_seqlens_q"),
      py::arg("context_lens"), py::arg("seq_ids"), py::arg("num_q_heads"),
      py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("tokens_per_page"),
      py::arg("scale"), py::arg("dtype"), py::arg("num_threads"),
      "Paged attention over raw CPU buffers; use blendrt.ops.cpu_attention, which checks "
      "the tensors behind the pointers.");

  m.def(
      "store_kv_cpu",
      [](uintptr_t k, uintptr_t v, int64_t k_row_stride, int64_t v_row_stride,
         uintptr_t k_cache, uintptr_t v_cache, int64_t num_pages, int64_t page_stride,
         int64_t token_stride, int64_t head_stride, const I32Array& slot_mapping,
         int32_t num_kv_heads, int32_t head_dim, int32_t tokens_per_page, int32_t dtype) {
        const I32Array slots = flat(slot_mapping, "slot_mapping");
        if (dtype < 0 || dtype > 2) throw std::invalid_argument("dtype code must be 0, 1 or 2");
        blendrt::StoreKVArgs args{reinterpret_cast<const void*>(k),
                                  reinterpret_cast<const void*>(v),
                                  k_row_stride,
                                  v_row_stride,
                                  reinterpret_cast<void*>(k_cache),
                                  reinterpret_cast<void*>(v_cache),
                                  num_pages,
                                  page_stride,
                                  token_stride,
                                  head_stride,
                                  slots.data(),
                                  slots.size(),
                                  num_kv_heads,
                                  head_dim,
                                  tokens_per_page,
                                  static_cast<blendrt::StorageType>(dtype)};
        py::gil_scoped_release release;
        blendrt::store_kv_cpu(args);
      },
      py::arg("k"), py::arg("v"), py::arg("k_row_stride"), py::arg("v_row_stride"),
      py::arg("k_cache"), py::arg("v_cache"), py::arg("num_pages"), py::arg("page_stride"),
      py::arg("token_stride"), py::arg("head_stride"), py::arg("slot_mapping"),
      py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("tokens_per_page"),
      py::arg("dtype"),
      "Stores K/V rows into pool slots over raw CPU buffers; use "
      "blendrt.ops.cpu_store_kv, which checks the tensors behind the pointers.");

  py::class_<KVCacheCore>(m, "KVCacheCore")
      .def(py::init<int32_t, uint64_t, bool>(), py::arg("num_pages"), py::arg("hash_seed") = 0,
           py::arg("enable_caching") = true)
      .def_property_readonly("caching_enabled", &KVCacheCore::caching_enabled)
      .def("register_member", &KVCacheCore::register_member, py::arg("name"),
           py::arg("tokens_per_page"))
      .def_property_readonly("num_members", &KVCacheCore::num_members)
      .def("tokens_per_page", &KVCacheCore::tokens_per_page, py::arg("member_id"))
      .def(
          "add_sequence",
          [](KVCacheCore& c, int64_t seq_id, int32_t member_id, const I32Array& ids,
             bool use_prefix_cache) {
            const I32Array a = flat(ids, "token_ids");
            c.add_sequence(seq_id, member_id, a.data(), a.size(), use_prefix_cache);
          },
          py::arg("seq_id"), py::arg("member_id"), py::arg("token_ids"),
          py::arg("use_prefix_cache") = true)
      .def(
          "append_tokens",
          [](KVCacheCore& c, int64_t seq_id, const I32Array& ids) {
            const I32Array a = flat(ids, "token_ids");
            c.append_tokens(seq_id, a.data(), a.size());
          },
          py::arg("seq_id"), py::arg("token_ids"))
      .def(
          "append_token_batch",
          [](KVCacheCore& c, const I64Array& seq_ids, const I32Array& token_ids) {
            if (seq_ids.ndim() != 1 || seq_ids.size() != token_ids.size()) {
              throw std::invalid_argument("seq_ids and token_ids must be 1-D of one length");
            }
            for (py::ssize_t i = 0; i < seq_ids.size(); ++i) {
              c.append_tokens(seq_ids.data()[i], token_ids.data() + i, 1);
            }
          },
          py::arg("seq_ids"), py::arg("token_ids"))
      .def("has_sequence", &KVCacheCore::has_sequence, py::arg("seq_id"))
      .def_property_readonly("num_sequences", &KVCacheCore::num_sequences)
      .def("num_cached_tokens", &KVCacheCore::num_cached_tokens, py::arg("seq_id"))
      .def("can_allocate", &KVCacheCore::can_allocate, py::arg("seq_id"),
           py::arg("num_new_tokens"))
      .def("allocate", &KVCacheCore::allocate, py::arg("seq_id"), py::arg("num_new_tokens"))
      .def(
          "allocate_batch",
          [](KVCacheCore& c, const I64Array& seq_ids, const I32Array& num_new) {
            if (seq_ids.ndim() != 1 || seq_ids.size() != num_new.size()) {
              throw std::invalid_argument("seq_ids and num_new_tokens must be 1-D of one length");
            }
            py::ssize_t i = 0;
            for (; i < seq_ids.size(); ++i) {
              if (!c.allocate(seq_ids.data()[i], num_new.data()[i])) break;
            }
            return i;
          },
          py::arg("seq_ids"), py::arg("num_new_tokens"),
          "Allocates in order, stopping at the first sequence that does not fit; returns how "
          "many were allocated.")
      .def("commit", &KVCacheCore::commit, py::arg("seq_id"), py::arg("num_tokens"))
      .def(
          "commit_batch",
          [](KVCacheCore& c, const I64Array& seq_ids, const I32Array& num_tokens) {
            if (seq_ids.ndim() != 1 || seq_ids.size() != num_tokens.size()) {
              throw std::invalid_argument("seq_ids and num_tokens must be 1-D of one length");
            }
            for (py::ssize_t i = 0; i < seq_ids.size(); ++i) {
              c.commit(seq_ids.data()[i], num_tokens.data()[i]);
            }
          },
          py::arg("seq_ids"), py::arg("num_tokens"))
      .def("free", &KVCacheCore::free, py::arg("seq_id"))
      .def("fork", &KVCacheCore::fork, py::arg("parent_id"), py::arg("child_id"))
      .def("clear_prefix_cache", &KVCacheCore::clear_prefix_cache)
      .def(
          "build_batch",
          [](const KVCacheCore& c, const I64Array& seq_ids, const I32Array& num_new,
             int32_t min_width) {
            if (seq_ids.ndim() != 1 || seq_ids.size() != num_new.size()) {
              throw std::invalid_argument("seq_ids and num_new_tokens must be 1-D of one length");
            }
            return batch_to_dict(blendrt::build_batch_metadata(
                c, seq_ids.data(), num_new.data(), static_cast<int32_t>(seq_ids.size()),
                min_width));
          },
          py::arg("seq_ids"), py::arg("num_new_tokens"), py::arg("min_block_table_width") = 0)
      .def(
          "sequence_info",
          [](const KVCacheCore& c, int64_t seq_id) {
            const blendrt::Sequence& s = c.sequence(seq_id);
            py::dict d;
            d["member_id"] = s.member;
            d["num_tokens"] = s.token_ids.size();
            d["num_computed_tokens"] = s.num_computed_tokens;
            d["block_table"] = vec_to_numpy(s.block_table);
            return d;
          },
          py::arg("seq_id"))
      .def_property_readonly("num_pages",
                             [](const KVCacheCore& c) { return c.allocator().num_pages(); })
      .def_property_readonly("num_free_pages",
                             [](const KVCacheCore& c) { return c.allocator().num_free(); })
      .def_property_readonly("num_evictable_pages",
                             [](const KVCacheCore& c) { return c.allocator().num_evictable(); })
      .def_property_readonly("num_indexed_pages", &KVCacheCore::num_indexed_pages)
      .def(
          "member_stats",
          [](const KVCacheCore& c, int32_t member_id) {
            const blendrt::MemberInfo& m = c.member(member_id);
            py::dict d;
            d["name"] = m.name;
            d["tokens_per_page"] = m.tokens_per_page;
            d["pages_in_use"] = c.allocator().num_in_use(member_id);
            d["pages_cached"] = c.allocator().num_evictable_of(member_id);
            d["hit_tokens"] = m.hit_tokens;
            d["miss_tokens"] = m.miss_tokens;
            d["num_sequences"] = m.num_sequences;
            return d;
          },
          py::arg("member_id"))
      .def(
          "page_info",
          [](const KVCacheCore& c, int32_t page) {
            const blendrt::PageAllocator& a = c.allocator();
            return py::make_tuple(a.refcount(page), a.is_cached(page), a.owner(page));
          },
          py::arg("page_id"), "(refcount, cached, owner member id or -1)")
      .def("lru_order", [](const KVCacheCore& c) { return c.allocator().lru_order(); })
      .def("check_invariants", &KVCacheCore::check_invariants);
}
