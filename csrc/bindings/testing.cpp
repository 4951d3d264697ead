// llmrt._core.testing: direct entry points to single CPU kernels, for tests
// and microbenchmarks. Each takes the ISA to use, so every compiled variant
// can be checked against the plain C++ one and against numpy.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <stdexcept>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "core/dtype.h"
#include "core/kv_cache.h"
#include "core/threadpool.h"
#include "cpu/arch/kernels.h"
#include "cpu/ops.h"

namespace py = pybind11;

namespace llmrt::bindings {

namespace {

// A weight prepared once (repacked as a model would) with its own thread pool,
// multiplied many times: for microbenchmarks.
class PreparedMatmul {
 public:
  PreparedMatmul(uint32_t type, Bytes data, int64_t rows, int64_t cols, int threads, bool int8,
                 const std::string& isa, bool repack)
      : data_(data), pool_(threads), int8_(int8), kern_(&kernels_named(isa)) {
    w_ = weight_view(type, rows, cols, data_, "weight");
    if (repack && int8 && cpu::can_repack(w_)) w_ = cpu::repack(pool_, w_, packed_);
  }
  py::array_t<float> run(py::array_t<float, py::array::c_style | py::array::forcecast> x) {
    if (x.ndim() != 2 || x.shape(1) != w_.cols) throw py::value_error("x must have shape (n, cols)");
    const int n = (int)x.shape(0);
    py::array_t<float> y({(int64_t)n, w_.rows});
    float* yp = y.mutable_data();
    const float* xp = x.data();
    {
      py::gil_scoped_release nogil;
      cpu::matmul(pool_, *kern_, w_, xp, n, yp, act_, int8_);
    }
    return y;
  }
  std::string layout() const { return dtype_name(w_.type); }
  size_t nbytes() const { return (size_t)w_.rows * w_.row_stride(); }

 private:
  Bytes data_;
  ThreadPool pool_;
  bool int8_;
  const cpu::Kernels* kern_;
  WeightView w_;
  cpu::PackedBytes packed_;
  cpu::ActBuffer act_;
};

}  // namespace

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

// q (n, H, hd) against k, v (T, KV, hd), T >= n, the queries at the last n
// positions: the keys and values are written into a paged cache of one layer
// (block tables interleaved with another sequence's unless contiguous), and
// the CPU attention runs over it. With a window, the blocks wholly behind
// the first query's window are marked gone (-1) in the table, as a sliding
// layer's cache frees them.
py::array_t<float> attention_paged(F32 q, F32 k, F32 v, int block_tokens,
                                   const std::string& kv_type, const std::string& isa,
                                   int threads, bool contiguous, float softcap, int window,
                                   std::optional<F32> sinks) {
  if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3)
    throw py::value_error("q, k, v must be 3-D");
  const int n = (int)q.shape(0), H = (int)q.shape(1), hd = (int)q.shape(2);
  const int T = (int)k.shape(0), KV = (int)k.shape(1);
  if (k.shape(2) != hd || v.shape(0) != T || v.shape(1) != KV || v.shape(2) != hd)
    throw py::value_error("k and v must both be (T, KV, hd)");
  if (n < 1 || T < n || KV < 1 || H % KV != 0) throw py::value_error("bad shapes");
  const KVType t = kv_type_from_name(kv_type);
  const int nb = (T + block_tokens - 1) / block_tokens;
  KVCache cache(1, KV, hd, block_tokens, 2 * nb, t, false);
  const int seq = cache.create(), other = cache.create();
  std::vector<int32_t> toks(block_tokens, 0);
  for (int b = 0; b < nb; ++b) {
    if (!contiguous) cache.append(other, toks.data(), block_tokens);
    cache.append(seq, toks.data(), std::min(block_tokens, T - b * block_tokens));
  }
  const cpu::Kernels& kern = kernels_named(isa);
  std::vector<int> table = cache.table(seq);
  cpu::kv_write(kern, cache, table.data(), 0, 0, T, k.data(), v.data());
  if (window > 0)
    for (int b = 0; (b + 1) * block_tokens <= T - n + 1 - window; ++b) table[b] = -1;
  py::array_t<float> out({n, H, hd});
  ThreadPool pool(threads);
  cpu::AttnScratch scr;
  const AttnSeq one{table.data(), n, T - n};
  AttnParams ap;
  ap.scale = 1.f / std::sqrt((float)hd);
  ap.softcap = softcap;
  ap.window = window;
  if (sinks) {
    if (sinks->ndim() != 1 || sinks->shape(0) != H) throw py::value_error("sinks must be (H,)");
    ap.sinks = sinks->data();
  }
  cpu::attention(pool, kern, cache, &one, 1, 0, q.data(), H, ap, out.mutable_data(), scr);
  return out;
}

// gate (n,) -> act(gate) * up through one ISA's kernel ("silu" or "gelu").
py::array_t<float> gated(const std::string& act, F32 gate, F32 up, const std::string& isa) {
  if (gate.ndim() != 1 || up.ndim() != 1 || gate.shape(0) != up.shape(0))
    throw py::value_error("gate and up must be 1-D of one length");
  const cpu::Kernels& kern = kernels_named(isa);
  py::array_t<float> out(gate.shape(0));
  std::memcpy(out.mutable_data(), gate.data(), sizeof(float) * gate.shape(0));
  if (act == "silu") kern.swiglu(out.mutable_data(), up.data(), gate.shape(0));
  else if (act == "gelu") kern.geglu(out.mutable_data(), up.data(), gate.shape(0));
  else throw py::value_error("act must be 'silu' or 'gelu'");
  return out;
}

// One ISA's row kernels: "gelu_erf" (x, in place), "layernorm" (each row of
// a 2-D x with w, b, eps) or "max" (each row's max, shape (rows,)).
py::array_t<float> row_kernel(const std::string& op, F32 x, const std::string& isa,
                              std::optional<F32> w, std::optional<F32> b, float eps) {
  const cpu::Kernels& kern = kernels_named(isa);
  if (x.ndim() != 2) throw py::value_error("x must be 2-D");
  const int64_t rows = x.shape(0), dim = x.shape(1);
  if (op == "gelu_erf") {
    py::array_t<float> out({rows, dim});
    std::memcpy(out.mutable_data(), x.data(), sizeof(float) * (size_t)(rows * dim));
    kern.gelu_erf(out.mutable_data(), rows * dim);
    return out;
  }
  if (op == "max") {
    py::array_t<float> out(rows);
    for (int64_t r = 0; r < rows; ++r) out.mutable_data()[r] = kern.max_f32(x.data() + r * dim, dim);
    return out;
  }
  if (op != "layernorm") throw py::value_error("op must be 'gelu_erf', 'layernorm' or 'max'");
  if (!w || !b || w->size() != dim || b->size() != dim)
    throw py::value_error("layernorm needs w and b of x's width");
  py::array_t<float> out({rows, dim});
  for (int64_t r = 0; r < rows; ++r)
    kern.layernorm(x.data() + r * dim, w->data(), b->data(), dim, eps, out.mutable_data() + r * dim);
  return out;
}

void bind_testing(py::module_& m) {
  m.def("row_kernel", &row_kernel, py::arg("op"), py::arg("x"), py::arg("isa") = "",
        py::arg("w") = py::none(), py::arg("b") = py::none(), py::arg("eps") = 1e-5f);
  m.def("gated", &gated, py::arg("act"), py::arg("gate"), py::arg("up"), py::arg("isa") = "");
  m.def("attention_paged", &attention_paged, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("block_tokens") = 32, py::arg("kv_type") = "f32", py::arg("isa") = "",
        py::arg("threads") = 1, py::arg("contiguous") = false, py::arg("softcap") = 0.f,
        py::arg("window") = 0, py::arg("sinks") = py::none());
  py::class_<PreparedMatmul>(m, "PreparedMatmul")
      .def(py::init<uint32_t, Bytes, int64_t, int64_t, int, bool, const std::string&, bool>(),
           py::arg("type"), py::arg("data"), py::arg("rows"), py::arg("cols"),
           py::arg("threads") = 1, py::arg("int8_activations") = true, py::arg("isa") = "",
           py::arg("repack") = true)
      .def("__call__", &PreparedMatmul::run, py::arg("x"))
      .def_property_readonly("layout", &PreparedMatmul::layout)
      .def_property_readonly("nbytes", &PreparedMatmul::nbytes);

  m.def("thread_pool_check",
        [](int threads, int regions, int max_tasks, int pause_every) {
          // every task of every region runs exactly once, whatever the
          // workers were doing (spinning, asleep after a pause, or late)
          py::gil_scoped_release nogil;
          ThreadPool pool(threads);
          std::vector<std::atomic<int>> hits((size_t)max_tasks);
          int64_t errors = 0;
          for (int r = 0; r < regions; ++r) {
            const int n = 1 + (int)((r * 7919LL) % max_tasks);
            for (auto& h : hits) h.store(0);
            pool.run(n, [&](int t) { hits[(size_t)t].fetch_add(1); });
            for (int t = 0; t < max_tasks; ++t) errors += hits[(size_t)t].load() != (t < n ? 1 : 0);
            if (pause_every > 0 && r % pause_every == pause_every - 1)
              std::this_thread::sleep_for(std::chrono::milliseconds(3));  // workers fall asleep
          }
          return errors;
        },
        py::arg("threads"), py::arg("regions"), py::arg("max_tasks") = 40,
        py::arg("pause_every") = 0,
        "Runs many parallel regions on a fresh pool; the number of tasks not run exactly once.");

  m.def("isa_available", [](const std::string& isa) {
    try {
      kernels_named(isa);
      return true;
    } catch (const std::runtime_error&) {
      return false;
    }
  }, py::arg("isa"), "Whether the ISA variant is compiled in and runs on this CPU.");

  m.def("matmul",
        [](uint32_t type, Bytes data, int64_t rows,
           int64_t cols, py::array_t<float, py::array::c_style | py::array::forcecast> x,
           const std::string& isa, int threads, bool int8, bool repack, bool invariant,
           bool precise, bool row_norms, bool panels, int jobs) {
          WeightView w = weight_view(type, rows, cols, data, "weight");
          if (x.ndim() != 2 || x.shape(1) != cols)
            throw py::value_error("x must have shape (n, cols)");
          const int n = (int)x.shape(0);
          if (n <= 0) throw py::value_error("x has no rows");
          const auto& k = kernels_named(isa);
          if (jobs < 1 || jobs > 8) throw py::value_error("jobs must be 1 to 8");
          py::array_t<float> y({(int64_t)jobs, (int64_t)n, rows});
          float* yp = y.mutable_data();
          const float* xp = x.data();
          {
            py::gil_scoped_release nogil;
            ThreadPool pool(threads);
            cpu::ActBuffer act;
            // as in a model: Q4_0 / Q4_1 take the repacked layout when they can
            cpu::PackedBytes packed;
            std::vector<float> l1;
            if (row_norms) {  // as the CPU backend prepares a head
              l1.resize((size_t)rows);
              std::vector<float> row((size_t)cols);
              for (int64_t r = 0; r < rows; ++r) {
                k.dequant[(int)w.type](w.row(r), row.data(), cols);
                double s = 0;
                for (float v : row) s += (double)v * v;
                l1[(size_t)r] = (float)(std::sqrt(s) * (1 + 1e-6));
              }
            }
            if (repack && int8 && cpu::can_repack(w)) w = cpu::repack(pool, w, packed);
            // as an encoder's weights: F16 kept as the float product's panels
            // (float activations) or as 14-bit integer panels (8-bit ones)
            cpu::PackedBytes halves;
            if (panels && w.type == DType::F16)
              w = int8 ? cpu::keep_i16_panels(pool, k, w, halves) : cpu::keep_panels(pool, w, halves);
            if (row_norms) w.row_l2 = l1.data();
            // the same weight `jobs` times in one call: the later jobs' rows
            // start where the earlier ones end (bands inside their panels)
            std::vector<MatmulJob> all;
            for (int j = 0; j < jobs; ++j) all.push_back(MatmulJob{&w, yp + (size_t)j * n * rows});
            all[0].precise = precise;
            cpu::matmul_many(pool, k, all.data(), jobs, xp, n, act, int8, invariant);
          }
          if (jobs == 1) return py::array_t<float>(y.reshape({(int64_t)n, rows}));
          return y;
        },
        py::arg("type"), py::arg("data"), py::arg("rows"), py::arg("cols"), py::arg("x"),
        py::arg("isa") = "", py::arg("threads") = 1, py::arg("int8_activations") = true,
        py::arg("repack") = true, py::arg("batch_invariant") = false, py::arg("precise") = false,
        py::arg("row_norms") = false, py::arg("panels") = false, py::arg("jobs") = 1,
        "y (n, rows) = x (n, cols) @ W^T for a GGUF-typed weight W (quantized types "
        "quantize x to 8-bit blocks first); with jobs > 1, (jobs, n, rows): the same "
        "product as that many jobs of one call.");

  m.def("quantize_act",
        [](py::array_t<float, py::array::c_style | py::array::forcecast> x, const std::string& isa) {
          if (x.ndim() != 1 || x.shape(0) % kQK != 0)
            throw py::value_error("x must be 1-D with a multiple of 32 elements");
          const int64_t n = x.shape(0), nb = n / kQK;
          py::array_t<float> d(nb), s(nb);
          py::array_t<int8_t> qs({nb, (int64_t)kQK});
          // values, absolute values, values with groups of 8 blocks interleaved,
          // sums of 16 (int16)
          std::vector<int8_t> q3((size_t)act_row_bytes(n));
          const cpu::Kernels& k = kernels_named(isa);
          k.quantize_act(x.data(), q3.data(), d.mutable_data(), s.mutable_data(), n);
          k.interleave_act(q3.data(), q3.data() + 2 * n, n);
          py::array_t<int8_t> qa({nb, (int64_t)kQK}), qt(n);
          py::array_t<int16_t> s16(n / 16);
          std::memcpy(s16.mutable_data(), q3.data() + 3 * n, (size_t)(n / 16) * 2);
          std::memcpy(qs.mutable_data(), q3.data(), (size_t)n);
          std::memcpy(qa.mutable_data(), q3.data() + n, (size_t)n);
          std::memcpy(qt.mutable_data(), q3.data() + 2 * n, (size_t)n);
          return py::make_tuple(d, s, qs, qa, qt, s16);
        },
        py::arg("x"), py::arg("isa") = "",
        "Activations -> 8 bits: (scales d, d * block sums, int8 values (n/32, 32), their "
        "absolute values (n/32, 32), the values with each group of 8 blocks interleaved "
        "4 at a time (n,), the sums of each 16 values (n/16,) int16).");
}

}  // namespace llmrt::bindings
