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

}  // namespace gpicture
