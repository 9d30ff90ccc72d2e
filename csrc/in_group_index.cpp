// In-group index: for each element, its rank among the elements of the same group,
// in order of appearance. Used by the DSVT set partition (index of a voxel inside its
// window). CPU implementation: a single O(N + G) counting pass.
#include <torch/extension.h>

#include "native.h"

namespace gpicture {

torch::Tensor in_group_index_cpu(const torch::Tensor& groups, int64_t num_groups) {
  TORCH_CHECK(groups.dim() == 1, "in_group_index: groups must be 1-D, got ", groups.dim(), "-D");
  TORCH_CHECK(groups.scalar_type() == torch::kLong, "in_group_index: groups must be int64");
  auto g = groups.contiguous();
  const int64_t n = g.numel();
  auto out = torch::empty_like(g);
  if (n == 0) return out;
  if (num_groups < 0) num_groups = g.max().item<int64_t>() + 1;
  TORCH_CHECK(g.min().item<int64_t>() >= 0, "in_group_index: group ids must be >= 0");
  TORCH_CHECK(g.max().item<int64_t>() < num_groups, "in_group_index: group id >= num_groups");
  std::vector<int64_t> counts(static_cast<size_t>(num_groups), 0);
  const int64_t* src = g.data_ptr<int64_t>();
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) dst[i] = counts[src[i]]++;
  return out;
}

torch::Tensor in_group_index(const torch::Tensor& groups, int64_t num_groups) {
#ifdef GPICTURE_WITH_CUDA
  if (groups.is_cuda()) return in_group_index_cuda(groups, num_groups);
#endif
  TORCH_CHECK(!groups.is_cuda(), "in_group_index: this build has no CUDA kernels");
  return in_group_index_cpu(groups, num_groups);
}

}  // namespace gpicture
