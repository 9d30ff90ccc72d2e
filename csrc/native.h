// Declarations of gpicture's native ops. Each op has a pure-torch reference in
// gpicture/ops/ and a parity test in tests/.
#pragma once
#include <torch/extension.h>

namespace gpicture {

torch::Tensor in_group_index_cpu(const torch::Tensor& groups, int64_t num_groups);
#ifdef GPICTURE_WITH_CUDA
torch::Tensor in_group_index_cuda(const torch::Tensor& groups, int64_t num_groups);
#endif
torch::Tensor in_group_index(const torch::Tensor& groups, int64_t num_groups);

// Rotated BEV IoU and NMS (csrc/rotated_iou*.{cpp,cu}). Boxes are (N, 5) x, y, dx, dy,
// heading or (N, 7) x, y, z, dx, dy, dz, heading (columns [0, 1, 3, 4, 6] are used).
// (N, 5) float64 contiguous BEV boxes on the input's device; `name` prefixes errors.
torch::Tensor bev_boxes(const torch::Tensor& boxes, const char* name);
torch::Tensor rotated_iou_cpu(const torch::Tensor& a, const torch::Tensor& b);
torch::Tensor nms_rotated_cpu(const torch::Tensor& boxes, const torch::Tensor& scores,
                              double iou_threshold);
#ifdef GPICTURE_WITH_CUDA
torch::Tensor rotated_iou_cuda(const torch::Tensor& a, const torch::Tensor& b);
torch::Tensor nms_rotated_cuda(const torch::Tensor& boxes, const torch::Tensor& scores,
                               double iou_threshold);
#endif
// IoU matrix (N, M) in the inputs' floating dtype.
torch::Tensor rotated_iou(const torch::Tensor& a, const torch::Tensor& b);
// Kept indices (int64), by decreasing score; ties keep their input order.
torch::Tensor nms_rotated(const torch::Tensor& boxes, const torch::Tensor& scores,
                          double iou_threshold);

}  // namespace gpicture
