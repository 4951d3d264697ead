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
#include "model/llama.h"

namespace py = pybind11;

namespace llmrt::bindings {

namespace {

class PyLlamaModel {
 public:
  PyLlamaModel(const py::dict& config, const py::dict& tensors, int threads, bool int8) {
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
      L.w_gate = view(p + "ffn_gate.weight", true);
      L.w_up = view(p + "ffn_up.weight", true);
      L.w_down = view(p + "ffn_down.weight", true);
      w.layers.push_back(L);
    }
    try {
      model_ = std::make_unique<LlamaModel>(c, std::move(w), make_cpu_backend(threads, int8));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }

  // tokens at positions [n_past, n_past + len) -> logits (len, vocab) or (vocab,)
  py::array_t<float> forward(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                             int n_past, bool all_logits) {
    if (tokens.ndim() != 1) throw py::value_error("tokens must be 1-D");
    const int n = (int)tokens.shape(0);
    if (n == 0) throw py::value_error("tokens is empty");
    const int V = model_->config().n_vocab;
    py::array_t<float> out = all_logits ? py::array_t<float>({(py::ssize_t)n, (py::ssize_t)V})
                                        : py::array_t<float>({(py::ssize_t)V});
    float* o = out.mutable_data();
    const int32_t* t = tokens.data();
    std::string err;
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lk(mu_);
      try {
        model_->forward(t, n, n_past, all_logits, o);
      } catch (const std::out_of_range& e) {
        err = e.what();
      }
    }
    if (!err.empty()) throw py::value_error(err);
    return out;
  }

  int n_ctx() const { return model_->config().n_ctx; }
  int n_vocab() const { return model_->config().n_vocab; }
  int threads() { return model_->backend().threads(); }
  std::string backend_name() { return model_->backend().name(); }
  size_t kv_cache_bytes() const { return model_->kv_cache_bytes(); }
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
  std::mutex mu_;
};

}  // namespace

void bind_model(py::module_& m) {
  py::class_<PyLlamaModel>(m, "LlamaModel")
      .def(py::init<const py::dict&, const py::dict&, int, bool>(), py::arg("config"),
           py::arg("tensors"), py::arg("threads"), py::arg("int8_activations") = true)
      .def("forward", &PyLlamaModel::forward, py::arg("tokens"), py::arg("n_past"),
           py::arg("all_logits") = false,
           "Run tokens at positions [n_past, n_past + len); returns float32 logits, "
           "(len, vocab) with all_logits else (vocab,) for the last token.")
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
