// CUDA in-group index. Order of appearance is kept by a stable sort of the group ids;
// each sorted element's rank is its position minus the start of its run, found with a
// max-scan of run starts. Compiled only where nvcc and a CUDA build of torch exist.
#include <ATen/cuda/CUDAContext.h>
#include <torch/extension.h>

#include "native.h"

namespace gpicture {
namespace {

__global__ void run_start_kernel(const int64_t* __restrict__ keys, int64_t n,
                                 int64_t* __restrict__ starts) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  starts[i] = (i == 0 || keys[i] != keys[i - 1]) ? i : 0;
}

__global__ void scatter_rank_kernel(const int64_t* __restrict__ order,
                                    const int64_t* __restrict__ run_start, int64_t n,
                                    int64_t* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  out[order[i]] = i - run_start[i];
}

}  // namespace

torch::Tensor in_group_index_cuda(const torch::Tensor& groups, int64_t /*num_groups*/) {
  TORCH_CHECK(groups.dim() == 1 && groups.scalar_type() == torch::kLong,
              "in_group_index: groups must be a 1-D int64 tensor");
  auto g = groups.contiguous();
  const int64_t n = g.numel();
  auto out = torch::empty_like(g);
  if (n == 0) return out;
  auto sorted = torch::sort(g, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto keys = std::get<0>(sorted).contiguous();
  auto order = std::get<1>(sorted).contiguous();
  auto starts = torch::empty_like(keys);
  const int threads = 256;
  const int blocks = static_cast<int>((n + threads - 1) / threads);
  auto stream = at::cuda::getCurrentCUDAStream();
  run_start_kernel<<<blocks, threads, 0, stream>>>(keys.data_ptr<int64_t>(), n,
                                                   starts.data_ptr<int64_t>());
  auto run_start = std::get<0>(torch::cummax(starts, 0)).contiguous();
  scatter_rank_kernel<<<blocks, threads, 0, stream>>>(
      order.data_ptr<int64_t>(), run_start.data_ptr<int64_t>(), n, out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace gpicture
