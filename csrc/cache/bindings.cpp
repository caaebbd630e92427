// Bindings of the page pool's bookkeeping (KVCacheCore) and its hash; the typed Python
// layer over them is blendrt/cache/manager.py.
#include <pybind11/stl.h>

#include "batch_metadata.h"
#include "bindings.h"
#include "hash128.h"
#include "kv_cache_core.h"

namespace blendrt {

namespace {

// Moves a vector into a numpy array without copying; the array owns the buffer.
py::array_t<int32_t> to_numpy(std::vector<int32_t>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<int32_t>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<int32_t>*>(p); });
  return py::array_t<int32_t>(shape, heap->data(), owner);
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
  d["context_lens"] = to_numpy(std::move(md.context_lens), {b});
  d["logits_indices"] = to_numpy(std::move(md.logits_indices), {b});
  d["max_query_len"] = md.max_query_len;
  d["max_context_len"] = md.max_context_len;
  return d;
}

}  // namespace

void bind_cache(py::module_& m) {
  m.def(
      "siphash128",
      [](py::bytes data, uint64_t k0, uint64_t k1) {
        const std::string s = data;
        const blendrt::Hash128 h = blendrt::siphash128(s.data(), s.size(), {k0, k1});
        return py::make_tuple(h.lo, h.hi);
      },
      py::arg("data"), py::arg("k0"), py::arg("k1"),
      "SipHash-2-4 with 128-bit output; returns (low 64 bits, high 64 bits).");

  py::class_<KVCacheCore>(m, "KVCacheCore")
      .def(py::init<int32_t, uint64_t, bool>(), py::arg("num_pages"), py::arg("hash_seed") = 0,
           py::arg("enable_prefix_caching") = true)
      .def_property_readonly("prefix_caching_enabled", &KVCacheCore::prefix_caching_enabled)
      .def("register_member", &KVCacheCore::register_member, py::arg("name"),
           py::arg("tokens_per_page"), py::arg("window") = 0)
      .def_property_readonly("num_members", &KVCacheCore::num_members)
      .def("tokens_per_page", &KVCacheCore::tokens_per_page, py::arg("member_id"))
      .def(
          "add_sequence",
          [](KVCacheCore& c, int64_t request_id, int32_t member_id, const I32Array& ids,
             bool use_prefix_cache) {
            const I32Array a = flat(ids, "token_ids");
            c.add_sequence(request_id, member_id, a.data(), a.size(), use_prefix_cache);
          },
          py::arg("request_id"), py::arg("member_id"), py::arg("token_ids"),
          py::arg("use_prefix_cache") = true)
      .def(
          "append_tokens",
          [](KVCacheCore& c, int64_t request_id, const I32Array& ids) {
            const I32Array a = flat(ids, "token_ids");
            c.append_tokens(request_id, a.data(), a.size());
          },
          py::arg("request_id"), py::arg("token_ids"))
      .def(
          "append_token_batch",
          [](KVCacheCore& c, const I64Array& request_ids, const I32Array& token_ids) {
            if (request_ids.ndim() != 1 || request_ids.size() != token_ids.size()) {
              throw std::invalid_argument("request_ids and token_ids must be 1-D of one length");
            }
            for (py::ssize_t i = 0; i < request_ids.size(); ++i) {
              c.append_tokens(request_ids.data()[i], token_ids.data() + i, 1);
            }
          },
          py::arg("request_ids"), py::arg("token_ids"))
      .def("has_sequence", &KVCacheCore::has_sequence, py::arg("request_id"))
      .def_property_readonly("num_sequences", &KVCacheCore::num_sequences)
      .def("num_cached_tokens", &KVCacheCore::num_cached_tokens, py::arg("request_id"))
      .def("can_allocate", &KVCacheCore::can_allocate, py::arg("request_id"),
           py::arg("num_new_tokens"))
      .def("allocate", &KVCacheCore::allocate, py::arg("request_id"), py::arg("num_new_tokens"))
      .def(
          "allocate_batch",
          [](KVCacheCore& c, const I64Array& request_ids, const I32Array& num_new) {
            if (request_ids.ndim() != 1 || request_ids.size() != num_new.size()) {
              throw std::invalid_argument("request_ids and num_new_tokens must be 1-D of one length");
            }
            py::ssize_t i = 0;
            for (; i < request_ids.size(); ++i) {
              if (!c.allocate(request_ids.data()[i], num_new.data()[i])) break;
            }
            return i;
          },
          py::arg("request_ids"), py::arg("num_new_tokens"),
          "Allocates in order, stopping at the first sequence that does not fit; returns how "
          "many were allocated.")
      .def("commit", &KVCacheCore::commit, py::arg("request_id"), py::arg("num_tokens"))
      .def(
          "commit_batch",
          [](KVCacheCore& c, const I64Array& request_ids, const I32Array& num_tokens) {
            if (request_ids.ndim() != 1 || request_ids.size() != num_tokens.size()) {
              throw std::invalid_argument("request_ids and num_tokens must be 1-D of one length");
            }
            for (py::ssize_t i = 0; i < request_ids.size(); ++i) {
              c.commit(request_ids.data()[i], num_tokens.data()[i]);
            }
          },
          py::arg("request_ids"), py::arg("num_tokens"))
      .def("free", &KVCacheCore::free, py::arg("request_id"))
      .def("fork", &KVCacheCore::fork, py::arg("parent_id"), py::arg("child_id"))
      .def("take_copies", &KVCacheCore::take_copies)
      .def("clear_prefix_cache", &KVCacheCore::clear_prefix_cache)
      .def(
          "build_batch",
          [](const KVCacheCore& c, const I64Array& request_ids, const I32Array& num_new,
             int32_t min_width) {
            if (request_ids.ndim() != 1 || request_ids.size() != num_new.size()) {
              throw std::invalid_argument("request_ids and num_new_tokens must be 1-D of one length");
            }
            return batch_to_dict(blendrt::build_batch_metadata(
                c, request_ids.data(), num_new.data(), static_cast<int32_t>(request_ids.size()),
                min_width));
          },
          py::arg("request_ids"), py::arg("num_new_tokens"), py::arg("min_block_table_width") = 0)
      .def(
          "sequence_info",
          [](const KVCacheCore& c, int64_t request_id) {
            const blendrt::Sequence& s = c.sequence(request_id);
            py::dict d;
            d["member_id"] = s.member;
            d["num_tokens"] = s.token_ids.size();
            d["num_computed_tokens"] = s.num_computed_tokens;
            d["block_table"] = vec_to_numpy(s.block_table);
            return d;
          },
          py::arg("request_id"))
      .def_property_readonly("num_pages",
                             [](const KVCacheCore& c) { return c.allocator().num_pages(); })
      .def_property_readonly("num_free_pages",
                             [](const KVCacheCore& c) { return c.allocator().num_free(); })
      .def_property_readonly("num_cached_pages",
                             [](const KVCacheCore& c) { return c.allocator().num_cached(); })
      .def_property_readonly("num_indexed_pages", &KVCacheCore::num_indexed_pages)
      .def(
          "member_stats",
          [](const KVCacheCore& c, int32_t member_id) {
            const blendrt::MemberInfo& m = c.member(member_id);
            py::dict d;
            d["name"] = m.name;
            d["tokens_per_page"] = m.tokens_per_page;
            d["pages_in_use"] = c.allocator().num_in_use(member_id);
            d["pages_cached"] = c.allocator().num_cached_of(member_id);
            d["hit_tokens"] = m.hit_tokens;
            d["miss_tokens"] = m.miss_tokens;
            d["num_sequences"] = m.num_sequences;
            d["slack_tokens"] = c.slack_tokens(member_id);
            d["window"] = m.window;
            d["released_pages"] = m.released_pages;
            return d;
          },
          py::arg("member_id"))
      .def(
          "page_info",
          [](const KVCacheCore& c, int32_t page) {
            const blendrt::PageAllocator& a = c.allocator();
            return py::make_tuple(a.refcount(page), a.is_registered(page), a.owner(page));
          },
          py::arg("page_id"), "(refcount, cached, owner member id or -1)")
      .def("lru_order", [](const KVCacheCore& c) { return c.allocator().lru_order(); })
      .def("check_invariants", &KVCacheCore::check_invariants);
}

}  // namespace blendrt
