// Binding of the vision tower (model/vision.h). The Python loader
// (llmrt/vision.py) validates the mmproj file and hands over its numbers and
// numpy views of the tensors by role; this file makes weight views, the
// backend the options name, and keeps the views alive with the tower.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "model/vision.h"

namespace py = pybind11;

namespace llmrt::bindings {

namespace {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

class PyVisionModel {
 public:
  PyVisionModel(const ConfigValues& config, const py::dict& tensors, const ModelOptions& o) {
    const std::map<std::string, WeightView> table = weight_table(tensors, keep_);
    try {
      const VisionConfig c = vision_config(config);
      tower_ = std::make_unique<VisionTower>(c, vision_weights(c, table), make_backend(o));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }

  // patches float32 (n_images * n_patches, patch_dim) -> float32 (n_images *
  // n_patches, n_embd)
  py::array_t<float> encode(const F32& patches) {
    const VisionConfig& c = tower_->config();
    if (patches.ndim() != 2 || patches.shape(1) != c.patch_dim || patches.shape(0) == 0 ||
        patches.shape(0) % c.n_patches != 0)
      throw py::value_error("encode: patches must be (n_images * " + std::to_string(c.n_patches) +
                            ", " + std::to_string(c.patch_dim) + ")");
    const int n_img = (int)(patches.shape(0) / c.n_patches);
    py::array_t<float> out({(py::ssize_t)patches.shape(0), (py::ssize_t)c.n_embd});
    float* o = out.mutable_data();
    const float* x = patches.data();
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lk(mu_);
      tower_->encode(x, n_img, o);
    }
    return out;
  }

  // x float32 (m, proj_in) -> float32 (m, proj_out)
  py::array_t<float> project(const F32& x) {
    const VisionConfig& c = tower_->config();
    if (x.ndim() != 2 || x.shape(1) != c.proj_in || x.shape(0) == 0)
      throw py::value_error("project: x must be (m, " + std::to_string(c.proj_in) + ")");
    const int m = (int)x.shape(0);
    py::array_t<float> out({(py::ssize_t)m, (py::ssize_t)c.proj_out});
    float* o = out.mutable_data();
    const float* xp = x.data();
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lk(mu_);
      tower_->project(xp, m, o);
    }
    return out;
  }

  const VisionConfig& config() const { return tower_->config(); }
  std::string backend() const { return tower_->backend().name(); }

 private:
  std::unique_ptr<VisionTower> tower_;
  std::vector<py::object> keep_;  // the views' buffers
  std::mutex mu_;
};

}  // namespace

void bind_vision(py::module_& m) {
  py::class_<PyVisionModel>(m, "VisionModel",
                            "A vision encoder and projector (SigLIP ViT; gemma 3, idefics3).")
      .def(py::init<const ConfigValues&, const py::dict&, const ModelOptions&>(),
           py::arg("config"), py::arg("tensors"), py::arg("options"))
      .def("encode", &PyVisionModel::encode, py::arg("patches"),
           "patches (n_images * n_patches, 3 * patch^2) -> encoded patches (rows, n_embd).")
      .def("project", &PyVisionModel::project, py::arg("x"),
           "x (m, proj_in) -> decoder embeddings (m, proj_out).")
      .def_property_readonly("n_embd", [](const PyVisionModel& v) { return v.config().n_embd; })
      .def_property_readonly("n_patches",
                             [](const PyVisionModel& v) { return v.config().n_patches; })
      .def_property_readonly("patch_dim",
                             [](const PyVisionModel& v) { return v.config().patch_dim; })
      .def_property_readonly("proj_in", [](const PyVisionModel& v) { return v.config().proj_in; })
      .def_property_readonly("proj_out",
                             [](const PyVisionModel& v) { return v.config().proj_out; })
      .def_property_readonly("backend", &PyVisionModel::backend);
}

}  // namespace llmrt::bindings
