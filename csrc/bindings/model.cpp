// Binding of LlamaModel. The Python loader (llmrt/gguf_loader.py) validates
// the file and hands over hyperparameters and numpy views of the mmap'd
// tensors; this file only turns them into a config map and weight views
// (model/llama_config.h knows the names), picks the backend named in the
// options, and keeps the views alive for as long as the model points into
// them. llmrt/engine.py is the one Python user.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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
#include "model/llama_config.h"

namespace py = pybind11;

namespace llmrt::bindings {

std::unique_ptr<Backend> make_backend(const ModelOptions& o) {
  if (o.threads < 1) throw py::value_error("threads must be >= 1");
  if (o.device == "cpu") return make_cpu_backend(o.threads, o.int8_activations, o.batch_invariant);
  if (o.device == "cuda") {
#if defined(LLMRT_WITH_CUDA)
    return make_cuda_backend(0, o.tensor_cores);
#else
    throw py::value_error("this llmrt build has no CUDA backend (built without a CUDA compiler)");
#endif
  }
  throw py::value_error("device must be 'cpu' or 'cuda', got '" + o.device + "'");
}

namespace {

using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

class PyLlamaModel {
 public:
  PyLlamaModel(const ConfigValues& config, const py::dict& tensors, const ModelOptions& o) {
    table_ = weight_table(tensors, keep_);
    CacheOptions co;
    co.tokens = o.kv_cache_tokens;
    co.bytes = o.kv_cache_bytes;
    co.type = kv_type_from_name(o.kv_cache_dtype);
    co.block_tokens = o.kv_block_tokens;
    co.prefix_caching = o.prefix_caching;
    LlamaConfig c = llama_config(config);
    LlamaWeights w = llama_weights(c, table_);
    model_ = std::make_unique<LlamaModel>(c, std::move(w), make_backend(o), co);
  }

  // Entries llmrt.step.StepEntry (seq, tokens, logits[, samplers,
  // n_generated]) -> the fields of llmrt.step.StepResult: (logits (rows,
  // vocab) float32, tokens (draws,) int32, logprobs: None, or per draw None /
  // (logprob, top ids, top logprobs)).
  py::tuple forward_batch(const py::list& entries) {
    const int count = (int)py::len(entries);
    if (count == 0) throw py::value_error("forward_batch: no entries");
    std::vector<I32> keep;  // the token arrays, alive until the call returns
    keep.reserve(count);
    std::vector<F32> keep_f;  // and the embeddings'
    std::vector<BatchEntry> es(count);
    std::vector<Sampler*> samplers;
    std::vector<int> first_sampler(count, 0);
    bool want_logprobs = false;
    for (int i = 0; i < count; ++i) {
      const py::tuple e = entries[i].cast<py::tuple>();
      if (e.size() != 3 && e.size() != 5 && e.size() != 6)
        throw py::value_error("forward_batch: entries are StepEntry(seq, tokens, logits, samplers, "
                              "n_generated, embeds) tuples");
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
      first_sampler[i] = (int)samplers.size();
      if (e.size() >= 5 && !e[3].is_none()) {
        for (auto s : e[3].cast<py::list>()) {
          Sampler* sp = s.cast<Sampler*>();
          for (const Sampler* other : samplers)
            if (other == sp) throw py::value_error("forward_batch: a sampler appears twice");
          samplers.push_back(sp);
          want_logprobs |= sp->config().logprobs >= 0;
        }
        es[i].n_samplers = (int)samplers.size() - first_sampler[i];
        es[i].n_generated = e[4].cast<int>();
      }
      if (e.size() == 6 && !e[5].is_none()) {  // rows given as embeddings
        keep_f.push_back(e[5].cast<F32>());
        const F32& x = keep_f.back();
        const int64_t m = model_->embed_rows(t.data(), es[i].n);
        if (x.ndim() != 2 || x.shape(0) != m || x.shape(1) != model_->config().n_embd)
          throw py::value_error("forward_batch: entry " + std::to_string(i) + ": embeds must be (" +
                                std::to_string(m) + ", " +
                                std::to_string(model_->config().n_embd) +
                                "), one row for each token id >= n_vocab");
        es[i].embeds = x.data();
      }
    }
    for (int i = 0; i < count; ++i) es[i].samplers = samplers.data() + first_sampler[i];
    const int64_t rows = LlamaModel::logit_rows(es.data(), count);
    const py::ssize_t V = model_->config().n_vocab;
    py::array_t<float> logits({(py::ssize_t)rows, V});
    py::array_t<int32_t> tokens((py::ssize_t)samplers.size());
    std::vector<TopLogprobs> lps(want_logprobs ? samplers.size() : 0);
    BatchOutput out;
    out.logits = rows ? logits.mutable_data() : nullptr;
    out.tokens = samplers.empty() ? nullptr : tokens.mutable_data();
    out.logprobs = want_logprobs ? lps.data() : nullptr;
    run_native(es, [&] { model_->forward_batch(es.data(), count, out); });
    py::object lp_out = py::none();
    if (want_logprobs) {
      py::list l;
      for (size_t j = 0; j < samplers.size(); ++j) {
        if (samplers[j]->config().logprobs < 0) l.append(py::none());
        else l.append(py::make_tuple(lps[j].token_logprob, lps[j].ids, lps[j].logprobs));
      }
      lp_out = l;
    }
    return py::make_tuple(logits, tokens, lp_out);
  }

  // Entries llmrt.step.DecodeEntry (seq, token, sampler, n_generated, budget)
  // -> up to `steps` decode steps in one call, the fields of
  // llmrt.step.DecodeResult: (tokens int32 (steps run, entries), -1 where an
  // entry had stopped; logprobs: None, or per step a list per entry of None /
  // (logprob, top ids, top logprobs)).
  py::tuple decode(const py::list& entries, int steps) {
    const int count = (int)py::len(entries);
    if (count == 0) throw py::value_error("decode: no entries");
    if (steps < 1) throw py::value_error("decode: steps must be >= 1");
    std::vector<DecodeEntry> es(count);
    bool want_logprobs = false;
    for (int i = 0; i < count; ++i) {
      const py::tuple e = entries[i].cast<py::tuple>();
      if (e.size() != 5)
        throw py::value_error("decode: entries are DecodeEntry(seq, token, sampler, n_generated, "
                              "budget) tuples");
      es[i].seq = e[0].cast<int>();
      es[i].token = e[1].cast<int32_t>();
      es[i].sampler = e[2].cast<Sampler*>();
      es[i].n_generated = e[3].cast<int>();
      es[i].budget = e[4].cast<int>();
      for (int j = 0; j < i; ++j)
        if (es[j].sampler == es[i].sampler || es[j].seq == es[i].seq)
          throw py::value_error("decode: a sampler or sequence appears twice");
      want_logprobs |= es[i].sampler->config().logprobs >= 0;
    }
    std::vector<int32_t> tokens((size_t)count * steps);
    std::vector<TopLogprobs> lps(want_logprobs ? tokens.size() : 0);
    int ran = 0;
    run_native(es, [&] {
      ran = model_->decode(es.data(), count, steps, tokens.data(),
                           want_logprobs ? lps.data() : nullptr);
    });
    py::array_t<int32_t> out({(py::ssize_t)ran, (py::ssize_t)count});
    std::copy(tokens.begin(), tokens.begin() + (size_t)ran * count, out.mutable_data());
    py::object lp_out = py::none();
    if (want_logprobs) {
      py::list per_step;
      for (int s = 0; s < ran; ++s) {
        py::list row;
        for (int i = 0; i < count; ++i) {
          const size_t k = (size_t)s * count + i;
          if (tokens[k] < 0 || es[i].sampler->config().logprobs < 0) row.append(py::none());
          else row.append(py::make_tuple(lps[k].token_logprob, lps[k].ids, lps[k].logprobs));
        }
        per_step.append(row);
      }
      lp_out = per_step;
    }
    return py::make_tuple(out, lp_out);
  }

  // Runs f on the model without the GIL, under the model's lock, once every
  // entry's sequence is known to exist; bad positions or token ids (out of
  // range) become ValueError.
  template <class Entries, class F>
  void run_native(const Entries& es, F&& f) {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lk(mu_);
    for (const auto& e : es)
      if (!model_->cache().alive(e.seq))
        throw py::value_error("no sequence " + std::to_string(e.seq));
    try {
      f();
    } catch (const std::out_of_range& e) {
      throw py::value_error(e.what());
    }
  }

  // Entries (seq, tokens): the tokens appended to each sequence, their final
  // normed hidden states -> float32 (rows, n_embd), entry after entry.
  py::array_t<float> hidden_states(const py::list& entries) {
    const int count = (int)py::len(entries);
    if (count == 0) throw py::value_error("hidden_states: no entries");
    std::vector<I32> keep;
    keep.reserve(count);
    std::vector<BatchEntry> es(count);
    int64_t rows = 0;
    for (int i = 0; i < count; ++i) {
      const py::tuple e = entries[i].cast<py::tuple>();
      if (e.size() != 2) throw py::value_error("hidden_states: entries are (seq, tokens)");
      keep.push_back(e[1].cast<I32>());
      const I32& t = keep.back();
      if (t.ndim() != 1 || t.shape(0) == 0)
        throw py::value_error("hidden_states: tokens must be a non-empty 1-D array");
      es[i].seq = e[0].cast<int>();
      es[i].tokens = t.data();
      es[i].n = (int)t.shape(0);
      es[i].logits = BatchEntry::kNone;
      rows += es[i].n;
    }
    const int D = model_->config().n_embd;
    py::array_t<float> out({(py::ssize_t)rows, (py::ssize_t)D});
    float* o = out.mutable_data();
    for (int i = 0; i < count; ++i) {
      es[i].hidden = o;
      o += (size_t)es[i].n * D;
    }
    run_native(es, [&] { model_->forward_batch(es.data(), count, BatchOutput{}); });
    return out;
  }

  // ---- sequences of the KV cache ----
  template <class F>
  auto locked(F&& f) {
    std::lock_guard<std::mutex> lk(mu_);
    return f(model_->cache());
  }
  int new_sequence() { return locked([](KVCache& c) { return c.create(); }); }
  using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
  // A and B as float32 or float16 arrays (both the same), C-contiguous
  int add_adapter(const std::vector<std::tuple<int, int, py::array, py::array>>& pairs) {
    std::vector<std::tuple<int, int, LoraPair>> ps;
    for (const auto& [layer, target, a, b] : pairs) {
      if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("LoRA A and B must be 2-D");
      const bool f16 = a.dtype().is(py::dtype("float16"));
      if ((!f16 && !a.dtype().is(py::dtype::of<float>())) || !b.dtype().is(a.dtype()))
        throw py::value_error("LoRA A and B must both be float32 or both float16");
      if (!(a.flags() & py::array::c_style) || !(b.flags() & py::array::c_style))
        throw py::value_error("LoRA A and B must be C-contiguous");
      LoraPair p;
      p.a.type = p.b.type = f16 ? DType::F16 : DType::F32;
      p.a.rows = a.shape(0);
      p.a.cols = a.shape(1);
      p.b.rows = b.shape(0);
      p.b.cols = b.shape(1);
      const auto* ab = static_cast<const uint8_t*>(a.data());
      const auto* bb = static_cast<const uint8_t*>(b.data());
      p.a_bytes.assign(ab, ab + a.nbytes());
      p.b_bytes.assign(bb, bb + b.nbytes());
      ps.emplace_back(layer, target, std::move(p));
    }
    std::lock_guard<std::mutex> lk(mu_);
    try {
      return model_->add_adapter(std::move(ps));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }
  void set_adapter(int seq, int id) {
    locked([&](KVCache& c) {
      if (id < 0 || id > model_->adapters())
        throw py::value_error("no LoRA adapter " + std::to_string(id));
      c.set_adapter(seq, id);
      return 0;
    });
  }
  void release_sequence(int seq) {
    locked([&](KVCache& c) {
      c.release(seq);
      return 0;
    });
  }
  int fork_sequence(int seq) { return locked([&](KVCache& c) { return c.fork(seq); }); }
  int reuse_prefix(int seq, I32 t) {
    if (t.ndim() != 1) throw py::value_error("tokens must be 1-D");
    return locked([&](KVCache& c) { return c.reuse_prefix(seq, t.data(), (int)t.shape(0)); });
  }
  void truncate(int seq, int n) {
    locked([&](KVCache& c) {
      if (n < 0 || n > c.length(seq))
        throw py::value_error("truncate: " + std::to_string(n) + " is past the sequence's " +
                              std::to_string(c.length(seq)) + " positions");
      c.truncate(seq, n);
      return 0;
    });
  }
  int seq_length(int seq) { return locked([&](KVCache& c) { return c.length(seq); }); }
  std::vector<int> block_table(int seq) { return locked([&](KVCache& c) { return c.table(seq); }); }
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
    if (c.has_sliding()) {  // the sliding-window layers' pool
      d["sliding_window"] = c.window();
      d["sliding_blocks_in_use"] = s.sliding_blocks_in_use;
      d["sliding_blocks_cached"] = s.sliding_blocks_cached;
    }
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
  // Names of the tensors whose file bytes the backend replaced by its own copy.
  std::vector<std::string> released_tensors() const {
    return llmrt::released_tensors(table_, model_->replaced_weights());
  }

 private:
  std::vector<py::object> keep_;  // numpy views the native weights point into
  TensorTable table_;
  std::unique_ptr<LlamaModel> model_;
  std::mutex mu_;
};

}  // namespace

void bind_model(py::module_& m) {
  py::register_exception<KVCacheFull>(m, "KVCacheFullError", PyExc_RuntimeError);
  // rows of one sequence in one pass: an image whose rows see each other fits in it
  m.attr("PASS_ROWS") = LlamaModel::kPassRows;
  py::class_<ModelOptions> opts(m, "ModelOptions",
                                "llmrt.Model's keywords, as the native model takes them.");
  opts.def(py::init<>());
  // each field under its name
#define LLMRT_OPTION(f) opts.def_readwrite(#f, &ModelOptions::f)
  LLMRT_OPTION(device);
  LLMRT_OPTION(threads);
  LLMRT_OPTION(int8_activations);
  LLMRT_OPTION(tensor_cores);
  LLMRT_OPTION(batch_invariant);
  LLMRT_OPTION(kv_cache_tokens);
  LLMRT_OPTION(kv_cache_bytes);
  LLMRT_OPTION(kv_cache_dtype);
  LLMRT_OPTION(kv_block_tokens);
  LLMRT_OPTION(prefix_caching);
#undef LLMRT_OPTION
  py::class_<PyLlamaModel>(m, "LlamaModel")
      .def(py::init<const ConfigValues&, const py::dict&, const ModelOptions&>(),
           py::arg("config"), py::arg("tensors"), py::arg("options"),
           "config: hyperparameters by name; tensors: GGUF name -> (ggml type id, rows, "
           "cols, uint8 array of the bytes).")
      .def("forward_batch", &PyLlamaModel::forward_batch, py::arg("entries"),
           "Run several sequences in shared passes over the weights. Entries are (seq, "
           "tokens, logits) with logits 'none', 'last' or 'all', or (seq, tokens, 'last', "
           "samplers, n_generated), whose samplers each draw a next token from the last "
           "row. Returns (logits: float32 (rows, vocab), the wanted rows of entries without "
           "samplers; tokens: int32, one per sampler; logprobs: None, or per sampler None "
           "or (logprob, top ids, top logprobs) where its options ask).")
      .def("decode", &PyLlamaModel::decode, py::arg("entries"), py::arg("steps"),
           "Up to `steps` decode steps in one call. Entries are (seq, token to feed, "
           "sampler, tokens generated so far, tokens it may still draw); an entry stops "
           "after one of its sampler's end tokens or its budget. Returns (tokens: int32 "
           "(steps run, entries), -1 once an entry stopped; logprobs: None, or per step a "
           "list per entry of None / (logprob, top ids, top logprobs)).")
      .def("hidden_states", &PyLlamaModel::hidden_states, py::arg("entries"),
           "Append (seq, tokens) entries in shared passes and return their rows' final "
           "normed hidden states (the output head's input), float32 (rows, n_embd).")
      .def("new_sequence", &PyLlamaModel::new_sequence)
      .def("add_adapter", &PyLlamaModel::add_adapter, py::arg("pairs"),
           "A LoRA adapter from (layer, target, A (rank, cols), B (rows, rank) already "
           "scaled) tuples, targets 0-6 = q, k, v, o, gate, up, down; returns its id.")
      .def("set_adapter", &PyLlamaModel::set_adapter, py::arg("seq"), py::arg("adapter"),
           "For an empty sequence: the adapter its rows run with (0: none).")
      .def("release_sequence", &PyLlamaModel::release_sequence, py::arg("seq"))
      .def("fork_sequence", &PyLlamaModel::fork_sequence, py::arg("seq"),
           "A new sequence sharing seq's blocks, copied on write.")
      .def("reuse_prefix", &PyLlamaModel::reuse_prefix, py::arg("seq"), py::arg("tokens"),
           "Map the longest cached prefix of tokens onto an empty sequence; returns the "
           "positions reused.")
      .def("truncate", &PyLlamaModel::truncate, py::arg("seq"), py::arg("n"))
      .def("seq_length", &PyLlamaModel::seq_length, py::arg("seq"))
      .def("block_table", &PyLlamaModel::block_table, py::arg("seq"))
      .def("blocks_available", &PyLlamaModel::blocks_available)
      .def("clear_prefix_cache", &PyLlamaModel::clear_prefix_cache)
      .def("cache_stats", &PyLlamaModel::cache_stats)
      .def_property_readonly("n_ctx", &PyLlamaModel::n_ctx)
      .def_property_readonly("n_vocab", &PyLlamaModel::n_vocab)
      .def_property_readonly("threads", &PyLlamaModel::threads)
      .def_property_readonly("backend", &PyLlamaModel::backend_name)
      .def_property_readonly("released_tensors", &PyLlamaModel::released_tensors);
}

}  // namespace llmrt::bindings
