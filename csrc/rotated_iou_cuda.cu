// CUDA rotated BEV IoU and NMS. Same geometry as csrc/rotated_iou.cpp (box a clipped by
// the four half-planes of box b in b's frame, Sutherland-Hodgman, double precision).
// NMS: boxes sorted by score; a (col_blocks x col_blocks) grid of 64-thread blocks
// writes, for each box i, a 64-bit mask per block of 64 boxes of the boxes j > i with
// IoU(i, j) > threshold; the greedy pass over the masks runs on the host.
// Compiled only where nvcc and a CUDA build of torch exist.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "native.h"

namespace gpicture {
namespace {

constexpr int kBoxDim = 5;
constexpr int kThreadsPerBlock = 64;  // one bit of an unsigned long long per box
constexpr int kPolyCap = 16;          // a convex quad clipped 4 times has at most 8 vertices

__device__ inline int clip_half_plane(const double* u, const double* v, int n, int axis,
                                      double sign, double limit, double* ou, double* ov) {
  int m = 0;
  for (int i = 0; i < n; ++i) {
    const int j = (i + 1 == n) ? 0 : i + 1;
    const double ci = axis == 0 ? u[i] : v[i];
    const double cj = axis == 0 ? u[j] : v[j];
    const double si = limit - sign * ci;
    const double sj = limit - sign * cj;
    if (si >= 0.0 && m < kPolyCap) {
      ou[m] = u[i];
      ov[m] = v[i];
      ++m;
    }
    if ((si >= 0.0) != (sj >= 0.0) && m < kPolyCap) {
      const double t = si / (si - sj);
      double pu = u[i] + t * (u[j] - u[i]);
      double pv = v[i] + t * (v[j] - v[i]);
      if (axis == 0) {
        pu = sign * limit;
      } else {
        pv = sign * limit;
      }
      ou[m] = pu;
      ov[m] = pv;
      ++m;
    }
  }
  return m;
}

// IoU of two BEV boxes given as (x, y, dx, dy, heading).
__device__ double box_iou(const double* a, const double* b) {
  const double hxa = fmax(a[2], 0.0) * 0.5, hya = fmax(a[3], 0.0) * 0.5;
  const double hxb = fmax(b[2], 0.0) * 0.5, hyb = fmax(b[3], 0.0) * 0.5;
  const double area_a = 4.0 * hxa * hya, area_b = 4.0 * hxb * hyb;
  if (area_a <= 0.0 || area_b <= 0.0) return 0.0;
  double sa, ca, sb, cb;
  sincos(a[4], &sa, &ca);
  sincos(b[4], &sb, &cb);
  // Bounding boxes apart: no overlap.
  const double dx = a[0] - b[0], dy = a[1] - b[1];
  if (fabs(dx) > hxa * fabs(ca) + hya * fabs(sa) + hxb * fabs(cb) + hyb * fabs(sb) ||
      fabs(dy) > hxa * fabs(sa) + hya * fabs(ca) + hxb * fabs(sb) + hyb * fabs(cb)) {
    return 0.0;
  }
  const double u0 = dx * cb + dy * sb;
  const double v0 = -dx * sb + dy * cb;
  const double cr = ca * cb + sa * sb;
  const double sr = sa * cb - ca * sb;
  double pu[kPolyCap], pv[kPolyCap], qu[kPolyCap], qv[kPolyCap];
  const double lx[4] = {hxa, -hxa, -hxa, hxa};
  const double ly[4] = {hya, hya, -hya, -hya};
  for (int k = 0; k < 4; ++k) {
    pu[k] = u0 + lx[k] * cr - ly[k] * sr;
    pv[k] = v0 + lx[k] * sr + ly[k] * cr;
  }
  int n = clip_half_plane(pu, pv, 4, 0, 1.0, hxb, qu, qv);
  if (n > 0) n = clip_half_plane(qu, qv, n, 0, -1.0, hxb, pu, pv);
  if (n > 0) n = clip_half_plane(pu, pv, n, 1, 1.0, hyb, qu, qv);
  if (n > 0) n = clip_half_plane(qu, qv, n, 1, -1.0, hyb, pu, pv);
  if (n < 3) return 0.0;
  double twice = 0.0;
  for (int i = 0; i < n; ++i) {
    const int j = (i + 1 == n) ? 0 : i + 1;
    twice += pu[i] * pv[j] - pu[j] * pv[i];
  }
  const double inter = fmin(fabs(twice) * 0.5, fmin(area_a, area_b));
  const double uni = area_a + area_b - inter;
  if (!(uni > 0.0)) return 0.0;
  return fmin(fmax(inter / uni, 0.0), 1.0);
}

__global__ void pairwise_iou_kernel(const double* __restrict__ a, int64_t n,
                                    const double* __restrict__ b, int64_t m,
                                    double* __restrict__ out) {
  const int64_t total = n * m;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += stride) {
    const int64_t i = p / m, j = p - i * m;
    out[p] = box_iou(a + i * kBoxDim, b + j * kBoxDim);
  }
}

// boxes: (n, 5) sorted by decreasing score. mask: (n, col_blocks); bit k of
// mask[i][cb] is set when IoU(i, cb * 64 + k) > threshold, for cb * 64 + k > i.
__global__ void nms_mask_kernel(const double* __restrict__ boxes, int64_t n, int64_t col_blocks,
                                double iou_threshold, unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (row_block > col_block) return;  // whole block: only j > i is ever read
  const int64_t row_left = n - row_block * kThreadsPerBlock;
  const int64_t col_left = n - col_block * kThreadsPerBlock;
  const int row_size = row_left < kThreadsPerBlock ? static_cast<int>(row_left) : kThreadsPerBlock;
  const int col_size = col_left < kThreadsPerBlock ? static_cast<int>(col_left) : kThreadsPerBlock;

  __shared__ double col_boxes[kThreadsPerBlock * kBoxDim];
  if (threadIdx.x < col_size) {
    const double* src = boxes + (col_block * kThreadsPerBlock + threadIdx.x) * kBoxDim;
    for (int k = 0; k < kBoxDim; ++k) col_boxes[threadIdx.x * kBoxDim + k] = src[k];
  }
  __syncthreads();

  if (threadIdx.x < row_size) {
    const int64_t i = row_block * kThreadsPerBlock + threadIdx.x;
    const double* cur = boxes + i * kBoxDim;
    unsigned long long bits = 0ULL;
    const int start = (row_block == col_block) ? static_cast<int>(threadIdx.x) + 1 : 0;
    for (int j = start; j < col_size; ++j) {
      if (box_iou(cur, col_boxes + j * kBoxDim) > iou_threshold) bits |= 1ULL << j;
    }
    mask[i * col_blocks + col_block] = bits;
  }
}

at::ScalarType iou_dtype(const torch::Tensor& a, const torch::Tensor& b) {
  auto dt = at::promote_types(a.scalar_type(), b.scalar_type());
  return at::isFloatingType(dt) ? dt : at::kFloat;
}

}  // namespace

torch::Tensor rotated_iou_cuda(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.is_cuda() && b.is_cuda() && a.device() == b.device(),
              "rotated_iou_cuda: a and b must be on the same CUDA device");
  const c10::cuda::CUDAGuard guard(a.device());
  const auto a5 = bev_boxes(a, "rotated_iou: a");
  const auto b5 = bev_boxes(b, "rotated_iou: b");
  const int64_t n = a5.size(0), m = b5.size(0);
  auto out = torch::empty({n, m}, a5.options());
  if (n > 0 && m > 0) {
    const int threads = 256;
    const int64_t needed = (n * m + threads - 1) / threads;
    const int blocks = static_cast<int>(std::min<int64_t>(needed, 65535));
    auto stream = at::cuda::getCurrentCUDAStream();
    pairwise_iou_kernel<<<blocks, threads, 0, stream>>>(a5.data_ptr<double>(), n, b5.data_ptr<double>(), m,
                                                        out.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out.to(iou_dtype(a, b));
}

torch::Tensor nms_rotated_cuda(const torch::Tensor& boxes, const torch::Tensor& scores,
                               double iou_threshold) {
  TORCH_CHECK(boxes.is_cuda() && scores.is_cuda() && boxes.device() == scores.device(),
              "nms_rotated_cuda: boxes and scores must be on the same CUDA device");
  const c10::cuda::CUDAGuard guard(boxes.device());
  const auto b5 = bev_boxes(boxes, "nms_rotated: boxes");
  const int64_t n = b5.size(0);
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == n, "nms_rotated: scores must have shape (", n,
              ",), got ", scores.sizes());
  if (n == 0) return torch::empty({0}, boxes.options().dtype(torch::kLong));
  const auto order = std::get<1>(torch::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const auto sorted = b5.index_select(0, order).contiguous();

  const int64_t col_blocks = (n + kThreadsPerBlock - 1) / kThreadsPerBlock;
  TORCH_CHECK(col_blocks <= 65535, "nms_rotated_cuda: too many boxes (", n, ")");
  auto mask = torch::zeros({n, col_blocks}, boxes.options().dtype(torch::kLong));
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
  auto stream = at::cuda::getCurrentCUDAStream();
  nms_mask_kernel<<<grid, kThreadsPerBlock, 0, stream>>>(
      sorted.data_ptr<double>(), n, col_blocks, iou_threshold,
      reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Greedy pass on the host: `removed` accumulates the masks of the kept boxes.
  const auto mask_cpu = mask.cpu();
  const auto* bits = reinterpret_cast<const unsigned long long*>(mask_cpu.data_ptr<int64_t>());
  std::vector<unsigned long long> removed(static_cast<size_t>(col_blocks), 0ULL);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t block = i / kThreadsPerBlock;
    const int offset = static_cast<int>(i % kThreadsPerBlock);
    if (removed[block] & (1ULL << offset)) continue;
    keep.push_back(i);
    const unsigned long long* row = bits + i * col_blocks;
    for (int64_t cb = block; cb < col_blocks; ++cb) removed[cb] |= row[cb];
  }
  auto kept = torch::from_blob(keep.data(), {static_cast<int64_t>(keep.size())}, torch::kLong)
                  .to(boxes.device());
  return order.index_select(0, kept);
}

}  // namespace gpicture
