// GGUF tensor types as llmrt runs them: the table of types (the one source
// llmrt/ggml_types.py reads), views over a tensor's bytes, dequantization.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/bindings.h"
#include "core/dtype.h"
#include "cpu/arch/kernels.h"

namespace py = pybind11;

namespace llmrt::bindings {

WeightView weight_view(uint32_t type, int64_t rows, int64_t cols, const Bytes& data,
                       const std::string& what) {
  if (!dtype_supported(type))
    throw py::value_error(what + ": unsupported tensor type id " + std::to_string(type));
  const DType t = static_cast<DType>(type);
  if (rows <= 0 || cols <= 0 || cols % block_elems(t) != 0)
    throw py::value_error(what + ": cols must be a positive multiple of the block size");
  const size_t want = (size_t)rows * row_bytes(t, cols);
  if ((size_t)data.nbytes() != want)
    throw py::value_error(what + ": buffer has " + std::to_string(data.nbytes()) +
                          " bytes, expected " + std::to_string(want));
  WeightView w;
  w.type = t;
  w.rows = rows;
  w.cols = cols;
  w.data = data.data();
  return w;
}

std::map<std::string, WeightView> weight_table(const py::dict& tensors,
                                               std::vector<py::object>& keep) {
  std::map<std::string, WeightView> table;
  for (auto item : tensors) {
    const std::string name = item.first.cast<std::string>();
    py::tuple t = item.second.cast<py::tuple>();
    if (t.size() != 4) throw py::value_error("tensors are (type, rows, cols, bytes)");
    Bytes arr = t[3].cast<Bytes>();
    table[name] = weight_view(t[0].cast<uint32_t>(), t[1].cast<int64_t>(), t[2].cast<int64_t>(),
                              arr, "tensor '" + name + "'");
    keep.push_back(arr);
  }
  return table;
}

const cpu::Kernels& kernels_named(const std::string& isa) {
  if (isa.empty()) return *cpu::active_kernels();
  for (auto i : cpu::kAllIsas)
    if (isa == cpu::isa_name(i)) return *cpu::kernels_for(i);
  throw py::value_error("unknown ISA '" + isa + "' (generic, avx2, avx512, avx512_vnni)");
}

void bind_tensors(py::module_& m) {
  m.def("ggml_types", [] {
    py::list out;
    for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1,
                    DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K,
                    DType::MXFP4})
      out.append(py::make_tuple(dtype_name(t), (uint32_t)t, block_elems(t), block_bytes(t)));
    return out;
  }, "The GGUF tensor types llmrt runs: (name, ggml_type id, weights per block, bytes per "
     "block).");

  m.def("dequantize",
        [](uint32_t type, Bytes data, int64_t rows, int64_t cols, const std::string& isa) {
          WeightView w = weight_view(type, rows, cols, data, "weight");
          const auto& k = kernels_named(isa);
          py::array_t<float> out({rows, cols});
          float* o = out.mutable_data();
          for (int64_t r = 0; r < rows; ++r) k.dequant[(int)w.type](w.row(r), o + r * cols, cols);
          return out;
        },
        py::arg("type"), py::arg("data"), py::arg("rows"), py::arg("cols"), py::arg("isa") = "",
        "Dequantize a (rows, cols) weight matrix stored as GGUF blocks.");
}

}  // namespace llmrt::bindings
