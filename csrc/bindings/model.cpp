// Binding of LlamaModel. The Python loader (llmrt/gguf_loader.py) validates
// the file and hands over numpy views of the mmap'd tensors; this class keeps
// those views alive for as long as the native model points into them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "cpu/backend_cpu.h"
#if defined(LLMRT_WITH_CUDA)
#include "cuda/backend_cuda.h"
#endif
#include "model/llama.h"

namespace py = pybind11;

namespace llmrt::bindings {

namespace {

class PyLlamaModel {
 public:
  PyLlamaModel(const py::dict& config, const py::dict& tensors, int threads, bool int8,
               int kv_tokens, const std::string& kv_type, int block_tokens, bool prefix_caching,
               bool batch_invariant, const std::string& device) {
    if (threads < 1) throw py::value_error("threads must be >= 1");
    LlamaConfig c;
    auto geti = [&](const char* k) {
      if (!config.contains(k)) throw py::value_error(std::string("config is missing '") + k + "'");
      return config[k].cast<int>();
    };
    auto getf = [&](const char* k, float dflt) {
      return config.contains(k) ? config[k].cast<float>() : dflt;
    };
    c.n_vocab = geti("n_vocab");
    c.n_embd = geti("n_embd");
    c.n_layer = geti("n_layer");
    c.n_head = geti("n_head");
    c.n_head_kv = geti("n_head_kv");
    c.head_dim = geti("head_dim");
    c.n_ff = geti("n_ff");
    c.n_ctx = geti("n_ctx");
    c.rms_eps = getf("rms_eps", 1e-5f);
    c.rope.n_rot = geti("n_rot");
    c.rope.freq_base = getf("rope_freq_base", 10000.f);
    c.rope.pos_scale = getf("rope_pos_scale", 1.f);
    c.rope.neox = config.contains("rope_neox") && config["rope_neox"].cast<bool>();
    c.n_expert = config.contains("n_expert") ? config["n_expert"].cast<int>() : 0;
    c.n_expert_used = config.contains("n_expert_used") ? config["n_expert_used"].cast<int>() : 0;
    for (int v : {c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_ctx})
      if (v <= 0) throw py::value_error("config values must be positive");

    auto view = [&](const std::string& name, bool required) -> WeightView {
      if (!tensors.contains(name)) {
        if (required) throw py::value_error("missing tensor '" + name + "'");
        return WeightView{};
      }
      py::tuple t = tensors[py::str(name)].cast<py::tuple>();
      const uint32_t type = t[0].cast<uint32_t>();
      const int64_t rows = t[1].cast<int64_t>(), cols = t[2].cast<int64_t>();
      Bytes arr = t[3].cast<Bytes>();
      WeightView w = weight_view(type, rows, cols, arr, "tensor '" + name + "'");
      keep_.push_back(arr);
      names_[w.data] = name;
      return w;
    };
    auto vec = [&](const std::string& name, int64_t n, bool required) -> const float* {
      WeightView w = view(name, required);
      if (w.empty()) return nullptr;
      if (w.type != DType::F32 || w.rows * w.cols != n)
        throw py::value_error("tensor '" + name + "' must be F32 with " + std::to_string(n) +
                              " elements");
      return reinterpret_cast<const float*>(w.data);
    };

    LlamaWeights w;
    w.tok_embd = view("token_embd.weight", true);
    w.output_norm = vec("output_norm.weight", c.n_embd, true);
    w.output = view("output.weight", false);
    if (w.output.empty()) w.output = w.tok_embd;  // tied embeddings
    c.rope.freq_factors = vec("rope_freqs.weight", c.rope.n_rot / 2, false);
    const int64_t qd = (int64_t)c.n_head * c.head_dim, kvd = (int64_t)c.n_head_kv * c.head_dim;
    for (int i = 0; i < c.n_layer; ++i) {
      const std::string p = "blk." + std::to_string(i) + ".";
      LayerWeights L;
      L.attn_norm = vec(p + "attn_norm.weight", c.n_embd, true);
      L.wq = view(p + "attn_q.weight", true);
      L.wk = view(p + "attn_k.weight", true);
      L.wv = view(p + "attn_v.weight", true);
      L.wo = view(p + "attn_output.weight", true);
      L.bq = vec(p + "attn_q.bias", qd, false);
      L.bk = vec(p + "attn_k.bias", kvd, false);
      L.bv = vec(p + "attn_v.bias", kvd, false);
      L.ffn_norm = vec(p + "ffn_norm.weight", c.n_embd, true);
      if (c.n_expert > 0) {
        L.router = view(p + "ffn_gate_inp.weight", true);
        // (n_expert, rows, cols) tensors: one view per expert
        auto experts = [&](const std::string& name, std::vector<WeightView>& out) {
          const WeightView all = view(name, true);
          names_.erase(all.data);  // slices: the tensor's pages stay mapped
          if (all.rows % c.n_expert != 0)
            throw py::value_error("tensor '" + name + "' does not split into " +
                                  std::to_string(c.n_expert) + " experts");
          const int64_t rows = all.rows / c.n_expert;
          for (int e = 0; e < c.n_expert; ++e) {
            WeightView v = all;
            v.rows = rows;
            v.data = all.data + (size_t)e * rows * all.row_stride();
            out.push_back(v);
          }
        };
        experts(p + "ffn_gate_exps.weight", L.e_gate);
        experts(p + "ffn_up_exps.weight", L.e_up);
        experts(p + "ffn_down_exps.weight", L.e_down);
      } else {
        L.w_gate = view(p + "ffn_gate.weight", true);
        L.w_up = view(p + "ffn_up.weight", true);
        L.w_down = view(p + "ffn_down.weight", true);
      }
      w.layers.push_back(L);
    }
    CacheOptions co;
    co.tokens = kv_tokens > 0 ? kv_tokens : c.n_ctx;
    co.block_tokens = block_tokens;
    co.prefix_caching = prefix_caching;
    if (kv_type == "f16") co.type = KVType::F16;
    else if (kv_type == "f32") co.type = KVType::F32;
    else if (kv_type == "q8_0") co.type = KVType::Q8_0;
    else throw py::value_error("kv_cache_dtype must be 'f16', 'f32' or 'q8_0', got '" + kv_type + "'");
    std::unique_ptr<Backend> backend;
    if (device == "cpu") {
      backend = make_cpu_backend(threads, int8, batch_invariant);
    } else if (device == "cuda") {
#if defined(LLMRT_WITH_CUDA)
      backend = make_cuda_backend(0);
#else
      throw py::value_error("this llmrt build has no CUDA backend (built without a CUDA compiler)");
#endif
    } else {
      throw py::value_error("device must be 'cpu' or 'cuda', got '" + device + "'");
    }
    try {
      model_ = std::make_unique<LlamaModel>(c, std::move(w), std::move(backend), co);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
    default_seq_ = model_->cache().create();
  }

  // Appends tokens to a sequence (after truncating it to n_past when n_past
  // >= 0) -> logits (len, vocab) or (vocab,).
  py::array_t<float> forward(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                             int n_past, bool all_logits, int seq) {
    if (tokens.ndim() != 1) throw py::value_error("tokens must be 1-D");
    const int n = (int)tokens.shape(0);
    if (n == 0) throw py::value_error("tokens is empty");
    if (seq < 0) seq = default_seq_;
    const int V = model_->config().n_vocab;
    py::array_t<float> out = all_logits ? py::array_t<float>({(py::ssize_t)n, (py::ssize_t)V})
                                        : py::array_t<float>({(py::ssize_t)V});
    float* o = out.mutable_data();
    const int32_t* t = tokens.data();
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lk(mu_);
      KVCache& kv = model_->cache();
      if (!kv.alive(seq)) throw py::value_error("no sequence " + std::to_string(seq));
      if (n_past >= 0) {
        if (n_past > kv.length(seq))
          throw py::value_error("n_past " + std::to_string(n_past) + " is past the sequence's " +
                                std::to_string(kv.length(seq)) + " positions");
        kv.truncate(seq, n_past);
      }
      try {
        model_->forward(seq, t, n, all_logits, o);
      } catch (const std::out_of_range& e) {
        throw py::value_error(e.what());
      }
    }
    return out;
  }

  // Several sequences in shared passes: entries (seq, tokens, logits) with
  // logits "none", "last" or "all" -> float32 (rows, vocab), the wanted rows
  // entry after entry.
  py::object forward_batch(const py::list& entries, bool greedy) {
    using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
    const int count = (int)py::len(entries);
    if (count == 0) throw py::value_error("forward_batch: no entries");
    std::vector<I32> keep;  // the token arrays, alive until the call returns
    keep.reserve(count);
    std::vector<BatchEntry> es(count);
    for (int i = 0; i < count; ++i) {
      const py::tuple e = entries[i].cast<py::tuple>();
      if (e.size() != 3) throw py::value_error("forward_batch: entries are (seq, tokens, logits)");
      keep.push_back(e[1].cast<I32>());
      const I32& t = keep.back();
      if (t.ndim() != 1 || t.shape(0) == 0)
        throw py::value_error("forward_batch: entry " + std::to_string(i) +
                              ": tokens must be a non-empty 1-D array");
      const std::string mode = e[2].cast<std::string>();
      es[i].seq = e[0].cast<int>();
      es[i].tokens = t.data();
      es[i].n = (int)t.shape(0);
      if (mode == "none") es[i].logits = BatchEntry::kNone;
      else if (mode == "last") es[i].logits = BatchEntry::kLast;
      else if (mode == "all") es[i].logits = BatchEntry::kAll;
      else throw py::value_error("forward_batch: logits must be 'none', 'last' or 'all', got '" +
                                 mode + "'");
    }
    const int64_t rows = LlamaModel::logit_rows(es.data(), count);
    py::array_t<float> out(greedy ? std::vector<py::ssize_t>{0, (py::ssize_t)model_->config().n_vocab}
                                  : std::vector<py::ssize_t>{(py::ssize_t)rows,
                                                             (py::ssize_t)model_->config().n_vocab});
    py::array_t<int32_t> ids(greedy ? (py::ssize_t)rows : 0);
    float* o = rows && !greedy ? out.mutable_data() : nullptr;
    int32_t* g = rows && greedy ? ids.mutable_data() : nullptr;
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lk(mu_);
      for (const BatchEntry& e : es)
        if (!model_->cache().alive(e.seq)) throw py::value_error("no sequence " + std::to_string(e.seq));
      try {
        model_->forward_batch(es.data(), count, o, g);
      } catch (const std::out_of_range& e) {
        throw py::value_error(e.what());
      }
    }
    if (greedy) return ids;
    return out;
  }

  // ---- sequences of the KV cache ----
  template <class F>
  auto locked(F&& f) {
    std::lock_guard<std::mutex> lk(mu_);
    return f(model_->cache());
  }
  int new_sequence() { return locked([](KVCache& c) { return c.create(); }); }
  void release_sequence(int seq) {
    locked([&](KVCache& c) {
      c.release(seq);
      return 0;
    });
  }
  int fork_sequence(int seq) { return locked([&](KVCache& c) { return c.fork(seq); }); }
  int reuse_prefix(int seq, py::array_t<int32_t, py::array::c_style | py::array::forcecast> t) {
    if (t.ndim() != 1) throw py::value_error("tokens must be 1-D");
    return locked([&](KVCache& c) { return c.reuse_prefix(seq, t.data(), (int)t.shape(0)); });
  }
  void truncate(int seq, int n) {
    locked([&](KVCache& c) {
      c.truncate(seq, n);
      return 0;
    });
  }
  int seq_length(int seq) { return locked([&](KVCache& c) { return c.length(seq); }); }
  std::vector<int32_t> seq_tokens(int seq) {
    return locked([&](KVCache& c) { return c.tokens(seq); });
  }
  std::vector<int> block_table(int seq) { return locked([&](KVCache& c) { return c.table(seq); }); }
  int blocks_needed(int seq, int n) { return locked([&](KVCache& c) { return c.blocks_needed(seq, n); }); }
  int blocks_available() { return locked([](KVCache& c) { return c.blocks_available(); }); }
  void clear_prefix_cache() {
    locked([](KVCache& c) {
      c.clear_prefix_cache();
      return 0;
    });
  }
  py::dict cache_stats() {
    const KVCacheStats s = locked([](KVCache& c) { return c.stats(); });
    const KVCache& c = model_->cache();
    py::dict d;
    d["tokens_computed"] = model_->tokens_computed();
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    d["tokens_reused"] = s.tokens_reused;
    d["evictions"] = s.evictions;
    d["copies"] = s.copies;
    d["blocks_total"] = s.blocks_total;
    d["blocks_in_use"] = s.blocks_in_use;
    d["blocks_cached"] = s.blocks_cached;
    d["blocks_free"] = s.blocks_free;
    d["block_tokens"] = c.block_tokens();
    d["block_bytes"] = c.block_bytes();
    d["capacity_tokens"] = c.capacity_tokens();
    d["pool_bytes"] = c.bytes();
    d["dtype"] = std::string(kv_type_name(c.type()));
    d["prefix_caching"] = c.prefix_caching();
    return d;
  }

  int n_ctx() const { return model_->config().n_ctx; }
  int n_vocab() const { return model_->config().n_vocab; }
  int threads() { return model_->backend().threads(); }
  std::string backend_name() { return model_->backend().name(); }
  size_t kv_cache_bytes() const { return model_->cache().bytes(); }
  int default_sequence() const { return default_seq_; }
  void set_profiling(bool on) { model_->set_profiling(on); }
  py::dict profile() const {
    const double* p = model_->profile();
    py::dict d;
    d["matmul"] = p[LlamaModel::kStageMatmul];
    d["attention"] = p[LlamaModel::kStageAttention];
    d["head"] = p[LlamaModel::kStageHead];
    d["other"] = p[LlamaModel::kStageOther];
    return d;
  }
  // Names of the tensors whose file bytes the backend replaced by its own copy.
  std::vector<std::string> replaced_tensors() const {
    std::vector<std::string> out;
    for (const uint8_t* p : model_->replaced_weights()) {
      auto it = names_.find(p);
      if (it != names_.end()) out.push_back(it->second);
    }
    return out;
  }

 private:
  std::vector<py::object> keep_;  // numpy views the native weights point into
  std::map<const uint8_t*, std::string> names_;
  std::unique_ptr<LlamaModel> model_;
  int default_seq_ = 0;  // the sequence forward() uses when none is named
  std::mutex mu_;
};

}  // namespace

void bind_model(py::module_& m) {
  py::register_exception<KVCacheFull>(m, "KVCacheFullError", PyExc_RuntimeError);
  py::class_<PyLlamaModel>(m, "LlamaModel")
      .def(py::init<const py::dict&, const py::dict&, int, bool, int, const std::string&, int,
                    bool, bool, const std::string&>(),
           py::arg("config"), py::arg("tensors"), py::arg("threads"),
           py::arg("int8_activations") = true, py::arg("kv_tokens") = 0,
           py::arg("kv_type") = "f16", py::arg("block_tokens") = 32,
           py::arg("prefix_caching") = true, py::arg("batch_invariant") = false,
           py::arg("device") = "cpu")
      .def("forward", &PyLlamaModel::forward, py::arg("tokens"), py::arg("n_past") = -1,
           py::arg("all_logits") = false, py::arg("seq") = -1,
           "Append tokens to a sequence of the KV cache (the default one unless seq is "
           "given), first truncating it to n_past positions when n_past >= 0; returns "
           "float32 logits, (len, vocab) with all_logits else (vocab,) for the last token.")
      .def("forward_batch", &PyLlamaModel::forward_batch, py::arg("entries"),
           py::arg("greedy") = false,
           "Run several sequences in shared passes over the weights: entries are "
           "(seq, tokens, logits) with logits 'none', 'last' or 'all'; returns float32 "
           "(rows, vocab), the wanted rows entry after entry, or with greedy=True their "
           "argmax token ids (int32, rows), the logits staying in the backend.")
      .def("new_sequence", &PyLlamaModel::new_sequence)
      .def("release_sequence", &PyLlamaModel::release_sequence, py::arg("seq"))
      .def("fork_sequence", &PyLlamaModel::fork_sequence, py::arg("seq"),
           "A new sequence sharing seq's blocks, copied on write.")
      .def("reuse_prefix", &PyLlamaModel::reuse_prefix, py::arg("seq"), py::arg("tokens"),
           "Map the longest cached prefix of tokens onto an empty sequence; returns the "
           "positions reused.")
      .def("truncate", &PyLlamaModel::truncate, py::arg("seq"), py::arg("n"))
      .def("seq_length", &PyLlamaModel::seq_length, py::arg("seq"))
      .def("seq_tokens", &PyLlamaModel::seq_tokens, py::arg("seq"))
      .def("block_table", &PyLlamaModel::block_table, py::arg("seq"))
      .def("blocks_needed", &PyLlamaModel::blocks_needed, py::arg("seq"), py::arg("n_tokens"))
      .def("blocks_available", &PyLlamaModel::blocks_available)
      .def("clear_prefix_cache", &PyLlamaModel::clear_prefix_cache)
      .def("cache_stats", &PyLlamaModel::cache_stats)
      .def_property_readonly("default_sequence", &PyLlamaModel::default_sequence)
      .def_property_readonly("n_ctx", &PyLlamaModel::n_ctx)
      .def_property_readonly("n_vocab", &PyLlamaModel::n_vocab)
      .def_property_readonly("threads", &PyLlamaModel::threads)
      .def_property_readonly("backend", &PyLlamaModel::backend_name)
      .def_property_readonly("kv_cache_bytes", &PyLlamaModel::kv_cache_bytes)
      .def_property_readonly("replaced_tensors", &PyLlamaModel::replaced_tensors)
      .def("set_profiling", &PyLlamaModel::set_profiling, py::arg("on"),
           "Start (and reset) or stop timing forward() by stage.")
      .def("profile", &PyLlamaModel::profile, "Seconds spent per stage while profiling.");
}

}  // namespace llmrt::bindings
