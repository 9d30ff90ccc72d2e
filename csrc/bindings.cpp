// Python bindings of gpicture._native.
#include <torch/extension.h>

#include "native.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gpicture native ops (CPU, and CUDA where built)";
  m.def("in_group_index", &gpicture::in_group_index, "rank of each element inside its group",
        pybind11::arg("groups"), pybind11::arg("num_groups") = -1);
  m.def("rotated_iou", &gpicture::rotated_iou, "rotated BEV IoU matrix (N, M) of (N, 5|7) and (M, 5|7) boxes",
        pybind11::arg("a"), pybind11::arg("b"));
  m.def("nms_rotated", &gpicture::nms_rotated,
        "greedy rotated BEV NMS: kept indices by decreasing score (IoU > threshold suppresses)",
        pybind11::arg("boxes"), pybind11::arg("scores"), pybind11::arg("iou_threshold"));
#ifdef GPICTURE_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
