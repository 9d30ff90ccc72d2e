// Rotated bird's-eye-view IoU and greedy NMS of oriented boxes (x, y, dx, dy, heading),
// or (x, y, z, dx, dy, dz, heading) boxes through their columns [0, 1, 3, 4, 6].
// CPU implementation: the intersection of two rectangles is the first one clipped by
// the four half-planes of the second (Sutherland-Hodgman), done in the second box's
// frame, where its half-planes are axis-aligned, in double precision.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "native.h"

namespace gpicture {
namespace {

struct Box {
  double x, y;    // centre
  double hx, hy;  // half sizes, clamped at 0
  double c, s;    // cos and sin of the heading
  double ex, ey;  // half sizes of the axis-aligned bounding box
  double area;
};

Box make_box(const double* p) {
  Box b;
  b.x = p[0];
  b.y = p[1];
  b.hx = std::max(p[2], 0.0) * 0.5;
  b.hy = std::max(p[3], 0.0) * 0.5;
  b.c = std::cos(p[4]);
  b.s = std::sin(p[4]);
  b.ex = b.hx * std::fabs(b.c) + b.hy * std::fabs(b.s);
  b.ey = b.hx * std::fabs(b.s) + b.hy * std::fabs(b.c);
  b.area = 4.0 * b.hx * b.hy;
  return b;
}

bool aabb_disjoint(const Box& a, const Box& b) {
  return std::fabs(a.x - b.x) > a.ex + b.ex || std::fabs(a.y - b.y) > a.ey + b.ey;
}

// Clips polygon (u, v)[0..n) by the half-plane sign * coord <= limit, where coord is u
// (axis 0) or v (axis 1). Writes at most `cap` points to (ou, ov); returns their count.
int clip_half_plane(const double* u, const double* v, int n, int axis, double sign, double limit,
                    double* ou, double* ov, int cap) {
  int m = 0;
  for (int i = 0; i < n; ++i) {
    const int j = (i + 1) % n;
    const double ci = axis == 0 ? u[i] : v[i];
    const double cj = axis == 0 ? u[j] : v[j];
    const double si = limit - sign * ci;  // >= 0: inside
    const double sj = limit - sign * cj;
    if (si >= 0.0 && m < cap) {
      ou[m] = u[i];
      ov[m] = v[i];
      ++m;
    }
    if ((si >= 0.0) != (sj >= 0.0) && m < cap) {
      const double t = si / (si - sj);  // si and sj differ in sign: denominator != 0
      double pu = u[i] + t * (u[j] - u[i]);
      double pv = v[i] + t * (v[j] - v[i]);
      if (axis == 0) pu = sign * limit; else pv = sign * limit;  // exactly on the line
      ou[m] = pu;
      ov[m] = pv;
      ++m;
    }
  }
  return m;
}

double intersection_area(const Box& a, const Box& b) {
  if (a.area <= 0.0 || b.area <= 0.0) return 0.0;
  // a's centre and relative heading in b's frame.
  const double dx = a.x - b.x, dy = a.y - b.y;
  const double u0 = dx * b.c + dy * b.s;
  const double v0 = -dx * b.s + dy * b.c;
  const double cr = a.c * b.c + a.s * b.s;  // cos(heading_a - heading_b)
  const double sr = a.s * b.c - a.c * b.s;  // sin(heading_a - heading_b)
  constexpr int kCap = 16;  // a convex quad clipped 4 times has at most 8 vertices
  double pu[kCap], pv[kCap], qu[kCap], qv[kCap];
  const double lx[4] = {a.hx, -a.hx, -a.hx, a.hx};
  const double ly[4] = {a.hy, a.hy, -a.hy, -a.hy};
  for (int k = 0; k < 4; ++k) {
    pu[k] = u0 + lx[k] * cr - ly[k] * sr;
    pv[k] = v0 + lx[k] * sr + ly[k] * cr;
  }
  int n = 4;
  n = clip_half_plane(pu, pv, n, 0, 1.0, b.hx, qu, qv, kCap);
  if (n == 0) return 0.0;
  n = clip_half_plane(qu, qv, n, 0, -1.0, b.hx, pu, pv, kCap);
  if (n == 0) return 0.0;
  n = clip_half_plane(pu, pv, n, 1, 1.0, b.hy, qu, qv, kCap);
  if (n == 0) return 0.0;
  n = clip_half_plane(qu, qv, n, 1, -1.0, b.hy, pu, pv, kCap);
  if (n < 3) return 0.0;
  double twice = 0.0;
  for (int i = 0; i < n; ++i) {
    const int j = (i + 1) % n;
    twice += pu[i] * pv[j] - pu[j] * pv[i];
  }
  const double area = std::fabs(twice) * 0.5;
  return std::min(area, std::min(a.area, b.area));
}

double box_iou(const Box& a, const Box& b) {
  const double inter = intersection_area(a, b);
  const double uni = a.area + b.area - inter;
  if (!(uni > 0.0)) return 0.0;
  return std::min(std::max(inter / uni, 0.0), 1.0);
}

std::vector<Box> make_boxes(const torch::Tensor& bev) {  // bev: contiguous (N, 5) double, CPU
  const int64_t n = bev.size(0);
  const double* p = bev.data_ptr<double>();
  std::vector<Box> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = make_box(p + 5 * i);
  return out;
}

at::ScalarType iou_dtype(const torch::Tensor& a, const torch::Tensor& b) {
  auto dt = at::promote_types(a.scalar_type(), b.scalar_type());
  return at::isFloatingType(dt) ? dt : at::kFloat;
}

}  // namespace

torch::Tensor bev_boxes(const torch::Tensor& boxes, const char* name) {
  TORCH_CHECK(boxes.dim() == 2 && (boxes.size(1) == 5 || boxes.size(1) == 7), name,
              " must have shape (N, 5) or (N, 7), got ", boxes.sizes());
  auto b = boxes;
  if (b.size(1) == 7) {
    auto cols = torch::tensor({0, 1, 3, 4, 6}, torch::TensorOptions().dtype(torch::kLong).device(b.device()));
    b = b.index_select(1, cols);
  }
  return b.to(torch::kDouble).contiguous();
}

torch::Tensor rotated_iou_cpu(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(!a.is_cuda() && !b.is_cuda(), "rotated_iou_cpu: boxes must be on the CPU");
  const auto a5 = bev_boxes(a, "rotated_iou: a");
  const auto b5 = bev_boxes(b, "rotated_iou: b");
  const int64_t n = a5.size(0), m = b5.size(0);
  auto out = torch::zeros({n, m}, torch::TensorOptions().dtype(torch::kDouble));
  if (n > 0 && m > 0) {
    const auto ba = make_boxes(a5);
    const auto bb = make_boxes(b5);
    double* o = out.data_ptr<double>();
    const int64_t grain = std::max<int64_t>(1, 2048 / m);
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < m; ++j) {
          if (aabb_disjoint(ba[i], bb[j])) continue;  // IoU 0, already written
          o[i * m + j] = box_iou(ba[i], bb[j]);
        }
      }
    });
  }
  return out.to(iou_dtype(a, b));
}

torch::Tensor nms_rotated_cpu(const torch::Tensor& boxes, const torch::Tensor& scores,
                              double iou_threshold) {
  TORCH_CHECK(!boxes.is_cuda() && !scores.is_cuda(), "nms_rotated_cpu: tensors must be on the CPU");
  const auto b5 = bev_boxes(boxes, "nms_rotated: boxes");
  const int64_t n = b5.size(0);
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == n, "nms_rotated: scores must have shape (", n,
              ",), got ", scores.sizes());
  if (n == 0) return torch::empty({0}, torch::TensorOptions().dtype(torch::kLong));
  const auto order = std::get<1>(torch::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true))
                         .contiguous();
  const auto sorted = make_boxes(b5.index_select(0, order).contiguous());
  // Disjoint bounding boxes have IoU 0, which suppresses only under a negative threshold.
  const bool can_reject = iou_threshold >= 0.0;
  std::vector<char> suppressed(static_cast<size_t>(n), 0);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) continue;
    keep.push_back(i);
    const Box& bi = sorted[i];
    for (int64_t j = i + 1; j < n; ++j) {
      if (suppressed[j]) continue;
      if (can_reject && aabb_disjoint(bi, sorted[j])) continue;
      if (box_iou(bi, sorted[j]) > iou_threshold) suppressed[j] = 1;
    }
  }
  auto kept = torch::from_blob(keep.data(), {static_cast<int64_t>(keep.size())}, torch::kLong).clone();
  return order.index_select(0, kept);
}

torch::Tensor rotated_iou(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), "rotated_iou: a and b must be on the same device, got ",
              a.device(), " and ", b.device());
#ifdef GPICTURE_WITH_CUDA
  if (a.is_cuda()) return rotated_iou_cuda(a, b);
#endif
  TORCH_CHECK(!a.is_cuda(), "rotated_iou: this build has no CUDA kernels");
  return rotated_iou_cpu(a, b);
}

torch::Tensor nms_rotated(const torch::Tensor& boxes, const torch::Tensor& scores, double iou_threshold) {
  TORCH_CHECK(boxes.device() == scores.device(), "nms_rotated: boxes and scores must be on the same device, got ",
              boxes.device(), " and ", scores.device());
#ifdef GPICTURE_WITH_CUDA
  if (boxes.is_cuda()) return nms_rotated_cuda(boxes, scores, iou_threshold);
#endif
  TORCH_CHECK(!boxes.is_cuda(), "nms_rotated: this build has no CUDA kernels");
  return nms_rotated_cpu(boxes, scores, iou_threshold);
}

}  // namespace gpicture
