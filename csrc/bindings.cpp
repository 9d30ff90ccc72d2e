// Python bindings of gpicture._native.
#include <torch/extension.h>

#include "native.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gpicture native ops (CPU, and CUDA where built)";
  m.def("in_group_index", &gpicture::in_group_index, "rank of each element inside its group",
        pybind11::arg("groups"), pybind11::arg("num_groups") = -1);
#ifdef GPICTURE_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
