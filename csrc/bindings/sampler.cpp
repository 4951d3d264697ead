// Binding of the sampler chain (core/sampler.h). The Python layer
// (llmrt/sampling.py) validates SamplingParams and passes one options dict;
// std::invalid_argument from the chain becomes ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "bindings/bindings.h"
#include "core/sampler.h"

namespace py = pybind11;

namespace llmrt::bindings {

namespace {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

SamplingConfig config_from(const py::dict& d) {
  SamplingConfig c;
  for (auto item : d) {
    const std::string k = item.first.cast<std::string>();
    py::handle v = item.second;
    if (k == "temperature") c.temperature = v.cast<float>();
    else if (k == "top_k") c.top_k = v.cast<int>();
    else if (k == "top_p") c.top_p = v.cast<float>();
    else if (k == "min_p") c.min_p = v.cast<float>();
    else if (k == "typical_p") c.typical_p = v.cast<float>();
    else if (k == "repetition_penalty") c.repetition_penalty = v.cast<float>();
    else if (k == "presence_penalty") c.presence_penalty = v.cast<float>();
    else if (k == "frequency_penalty") c.frequency_penalty = v.cast<float>();
    else if (k == "penalty_last_n") c.penalty_last_n = v.cast<int>();
    else if (k == "logit_bias") {
      for (auto kv : v.cast<py::dict>())
        c.logit_bias.emplace_back(kv.first.cast<int32_t>(), kv.second.cast<float>());
    } else if (k == "mirostat") c.mirostat = v.cast<int>();
    else if (k == "mirostat_tau") c.mirostat_tau = v.cast<float>();
    else if (k == "mirostat_eta") c.mirostat_eta = v.cast<float>();
    else if (k == "min_new_tokens") c.min_new_tokens = v.cast<int>();
    else if (k == "end_ids") c.end_ids = v.cast<std::vector<int32_t>>();
    else if (k == "seed") c.seed = v.cast<uint64_t>();
    else if (k == "logprobs") c.logprobs = v.cast<int>();
    else throw py::value_error("unknown sampler option '" + k + "'");
  }
  return c;
}

void check_logits(const Sampler& s, const F32& logits) {
  if (logits.ndim() != 1 || logits.shape(0) != s.n_vocab())
    throw py::value_error("logits must be 1-D of the vocabulary size " +
                          std::to_string(s.n_vocab()));
}

void check_history(const I32& history) {
  if (history.ndim() != 1) throw py::value_error("history must be 1-D");
}

}  // namespace

void bind_sampler(py::module_& m) {
  // Python subclasses it (llmrt.sampling.Sampler); forward_batch takes
  // instances as the samplers of its entries.
  py::class_<Sampler>(m, "Sampler")
      .def(py::init([](const py::dict& options, int n_vocab) {
             return std::make_unique<Sampler>(config_from(options), n_vocab);
           }),
           py::arg("options"), py::arg("n_vocab"))
      .def("sample",
           [](Sampler& s, F32 logits, I32 history, int n_generated) {
             check_logits(s, logits);
             check_history(history);
             py::gil_scoped_release nogil;  // it may wait for a mask another thread writes
             return s.sample(logits.data(), history.data(), (int)history.shape(0), n_generated);
           },
           py::arg("logits"), py::arg("history"), py::arg("n_generated"),
           "The next token for these logits, given the tokens so far (prompt and "
           "generated) and how many were generated.")
      .def("distribution",
           [](Sampler& s, F32 logits, I32 history, int n_generated) {
             check_logits(s, logits);
             check_history(history);
             py::array_t<float> out(s.n_vocab());
             float* o = out.mutable_data();
             {
               py::gil_scoped_release nogil;
               s.distribution(logits.data(), history.data(), (int)history.shape(0), n_generated,
                              o);
             }
             return out;
           },
           py::arg("logits"), py::arg("history"), py::arg("n_generated"),
           "The probabilities sample() would draw from (float32, vocabulary size; one-hot "
           "when greedy). Not for mirostat.")
      .def("enable_mask", &Sampler::enable_mask,
           "Gives the sampler a token mask (all tokens allowed until written).")
      .def(
          "mask",
          [](py::object self) {
            Sampler& s = self.cast<Sampler&>();
            if (s.mask_word_count() == 0)
              throw py::value_error("the sampler has no token mask (enable_mask)");
            // a view of the words, kept alive by the sampler
            return py::array_t<uint32_t>({(py::ssize_t)s.mask_word_count()}, {4},
                                         s.mask_words(), self);
          },
          "The mask's words (uint32, a view): bit t % 32 of word t / 32 allows token t.")
      .def("expect_mask", &Sampler::expect_mask,
           "The next draw waits for mask_done() and draws only tokens the mask allows.")
      .def("mask_done", &Sampler::mask_done, py::call_guard<py::gil_scoped_release>(),
           "The mask's words are written: a draw waiting for them goes on.")
      .def("clear_mask", &Sampler::clear_mask,
           "Forgets an expected mask (the next draw is unmasked).")
      .def_property_readonly("mask_expected", &Sampler::mask_expected)
      .def_property_readonly("mirostat_mu", &Sampler::mirostat_mu)
      .def_property_readonly("n_vocab", &Sampler::n_vocab);
  m.def(
      "top_logprobs",
      [](F32 logits, int token, int n) {
        if (logits.ndim() != 1) throw py::value_error("logits must be 1-D");
        const TopLogprobs r = top_logprobs(logits.data(), (int)logits.shape(0), token, n);
        return py::make_tuple(r.token_logprob, r.ids, r.logprobs);
      },
      py::arg("logits"), py::arg("token"), py::arg("n"),
      "log_softmax(logits)[token] and the n best (ids, logprobs), best first.");
}

}  // namespace llmrt::bindings
