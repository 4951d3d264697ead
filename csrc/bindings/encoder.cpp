// Binding of the text encoder (model/encoder.h). The Python loader
// (llmrt/encoder.py) validates the GGUF file and hands over its numbers and
// numpy views of the tensors by role; this file sums each token's embedding
// rows on the host (the tables stay as stored: one row dequantized a token),
// makes the backend the options name, and keeps the views alive.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "cpu/arch/kernels.h"
#include "model/encoder.h"

namespace py = pybind11;

namespace llmrt::bindings {

namespace {

using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

class PyEncoderModel {
 public:
  PyEncoderModel(const EncoderValues& config, const py::dict& tensors, const ModelOptions& o) {
    const std::map<std::string, WeightView> table = weight_table(tensors, keep_);
    try {
      const EncoderConfig c = encoder_config(config);
      EncoderWeights w = encoder_weights(c, table);
      tok_ = w.tok, pos_ = w.pos, types_ = w.types;
      enc_ = std::make_unique<Encoder>(c, std::move(w), make_backend(o));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }

  // ids, types, positions (rows,) int32 and lengths (n_texts,) -> float32
  // (rows, n_embd): every token's final hidden state, texts end to end.
  py::array_t<float> encode(const I32& ids, const I32& types, const I32& pos, const I32& lengths) {
    const EncoderConfig& c = enc_->config();
    if (ids.ndim() != 1 || types.ndim() != 1 || pos.ndim() != 1 || lengths.ndim() != 1)
      throw py::value_error("encode: ids, types, positions and lengths must be 1-D");
    const int64_t rows = ids.shape(0);
    if (types.shape(0) != rows || pos.shape(0) != rows)
      throw py::value_error("encode: ids, types and positions differ in length");
    const int n_seq = (int)lengths.shape(0);
    if (n_seq < 1 || rows < 1) throw py::value_error("encode: no text");
    if (rows > (int64_t)1 << 30) throw py::value_error("encode: too many tokens");
    std::vector<int32_t> starts((size_t)n_seq + 1, 0);
    const int32_t* len = lengths.data();
    for (int s = 0; s < n_seq; ++s) {
      if (len[s] < 1) throw py::value_error("encode: a text of no tokens");
      starts[(size_t)s + 1] = starts[(size_t)s] + len[s];
      if (starts[(size_t)s + 1] > rows) break;
    }
    if (starts[(size_t)n_seq] != rows)
      throw py::value_error("encode: the lengths do not add up to the tokens given");
    const int32_t *ip = ids.data(), *tp = types.data(), *pp = pos.data();
    for (int64_t t = 0; t < rows; ++t) {
      if (ip[t] < 0 || ip[t] >= c.n_vocab)
        throw py::value_error("encode: token id " + std::to_string(ip[t]) + " out of range");
      if (tp[t] < 0 || tp[t] >= std::max(c.n_types, 1))
        throw py::value_error("encode: token type " + std::to_string(tp[t]) + " out of range");
      if (pp[t] < 0 || (c.n_pos > 0 && pp[t] >= c.n_pos))
        throw py::value_error("encode: position " + std::to_string(pp[t]) +
                              " past the model's " + std::to_string(c.n_pos));
    }
    const int D = c.n_embd;
    py::array_t<float> out({(py::ssize_t)rows, (py::ssize_t)D});
    float* o = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lk(mu_);
      // x0 = token + position + type rows, dequantized on the host
      const cpu::Kernels& k = *cpu::active_kernels();
      x0_.resize((size_t)rows * D);
      std::vector<float> row((size_t)D);
      for (int64_t t = 0; t < rows; ++t) {
        float* x = x0_.data() + (size_t)t * D;
        k.dequant[(int)tok_.type](tok_.row(ip[t]), x, D);
        for (const auto& [table, id] : {std::pair<const WeightView*, int32_t>{&pos_, pp[t]},
                                        {&types_, tp[t]}}) {
          if (table->empty()) continue;
          k.dequant[(int)table->type](table->row(id), row.data(), D);
          for (int i = 0; i < D; ++i) x[i] += row[(size_t)i];
        }
      }
      enc_->encode(x0_.data(), pp, starts.data(), n_seq, o);
    }
    return out;
  }

  const EncoderConfig& config() const { return enc_->config(); }
  std::string backend() const { return enc_->backend().name(); }

 private:
  std::unique_ptr<Encoder> enc_;
  WeightView tok_, pos_, types_;
  std::vector<float> x0_;
  std::vector<py::object> keep_;  // the views' buffers
  std::mutex mu_;
};

}  // namespace

void bind_encoder(py::module_& m) {
  py::class_<PyEncoderModel>(m, "EncoderModel",
                             "A text encoder (BERT, XLM-RoBERTa, nomic-bert): hidden states of "
                             "many texts in one pass.")
      .def(py::init<const EncoderValues&, const py::dict&, const ModelOptions&>(),
           py::arg("config"), py::arg("tensors"), py::arg("options"))
      .def("encode", &PyEncoderModel::encode, py::arg("ids"), py::arg("types"),
           py::arg("positions"), py::arg("lengths"),
           "ids, token types, positions (rows,) and each text's length (n,) -> hidden states "
           "(rows, n_embd), the texts end to end.")
      .def_property_readonly("n_embd", [](const PyEncoderModel& e) { return e.config().n_embd; })
      .def_property_readonly("n_vocab", [](const PyEncoderModel& e) { return e.config().n_vocab; })
      .def_property_readonly("n_pos", [](const PyEncoderModel& e) { return e.config().n_pos; })
      .def_property_readonly("n_types", [](const PyEncoderModel& e) { return e.config().n_types; })
      .def_property_readonly("backend", &PyEncoderModel::backend);
}

}  // namespace llmrt::bindings
