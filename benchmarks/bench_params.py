"""Parameter counts of the full profiles against the reference configurations.

Run: .venv/bin/python benchmarks/bench_params.py

For the paper's nuScenes and Waymo profiles (params.yaml ``profiles.full``) it builds our
student (dynamic pillar VFE + DSVT encoder), the GPICTURE decoder and the detection head
(BEV trunk + CenterPoint head; Waymo: DSVT's ``dsvt_3D_1f_onestage`` head) and counts their
parameters. The reference values are computed *by hand* below, layer by layer, from the
reference architectures' definitions (OpenPCDet's DynamicPillarVFE / PFNLayerV2, DSVT's
DSVTInputLayer position embeddings, SetAttention + DSVT_EncoderLayer, Stage_ReductionAtt_Block,
BaseBEVResBackbone and CenterHead's SeparateHead); nothing of them is imported. The ratio
column is ours / reference, and the notes say where a deliberate difference remains.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from gpicture.data.spec import NUSCENES, WAYMO, DatasetSpec
from gpicture.models.detection.centerpoint import CenterPoint
from gpicture.models.detection.targets import BEVGrid
from gpicture.models.pretrain import GPicturePretrainer, ReconstructionConfig
from gpicture.models.student import Student, StudentConfig
from gpicture.params import load_section, with_profile
from gpicture.tasks.detection.task import DetectionTask

REPO = Path(__file__).resolve().parent.parent


def count(module) -> int:  # noqa: ANN001
    return sum(p.numel() for p in module.parameters())


# -- the reference architectures, by hand ---------------------------------------------------


def ref_vfe(cin: int, filters: list[int]) -> int:
    """PFNLayerV2: Linear (no bias) + BatchNorm1d; a non-last layer outputs half its filters."""
    total, c = 0, cin
    for i, f in enumerate(filters):
        out = f if i == len(filters) - 1 else f // 2
        total += c * out + 2 * out
        c = f
    return total


def ref_mha(d: int) -> int:
    return 3 * d * d + 3 * d + d * d + d  # in_proj (q, k, v) + out_proj


def ref_encoder_layer(d: int, ffn: int, pos_in: int) -> int:
    """DSVT_EncoderLayer(SetAttention) + its PositionEmbeddingLearned(pos_in, d)."""
    set_attention = ref_mha(d) + d * ffn + ffn + ffn * d + d + 2 * (2 * d)  # attention, FFN, norm1, norm2
    outer_norm = 2 * d
    pos = pos_in * d + d + 2 * d + d * d + d  # Linear, BatchNorm1d, Linear
    return set_attention + outer_norm + pos


def ref_dsvt(d: int, ffn: int, windows: list[list[int]], blocks: list[int], strides: list[list[int]]) -> int:
    total = 0
    for s, (w, b) in enumerate(zip(windows, blocks, strict=True)):
        pos_in = 2 if w[2] == 1 else 3  # DSVT embeds (x, y) only where the window is one voxel high
        total += 2 * b * ref_encoder_layer(d, ffn, pos_in)
        if s < len(strides):
            volume = strides[s][0] * strides[s][1] * strides[s][2]
            total += ref_mha(d) + 2 * d + volume * d  # Stage_ReductionAtt_Block: attention, norm, slot table
    return total


def ref_basic_block(cin: int, cout: int, down: bool) -> int:
    return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout + (cin * cout + 2 * cout if down else 0)


def ref_bev_res_backbone(cin: int) -> int:
    """BaseBEVResBackbone, LAYER_NUMS [1, 2, 2], strides [1, 2, 2], filters [128, 128, 256],
    upsample [1, 2, 4] to 128 each."""
    total, c = 0, cin
    for n, f, u in zip((1, 2, 2), (128, 128, 256), (1, 2, 4), strict=True):
        total += ref_basic_block(c, f, True) + n * ref_basic_block(f, f, False)
        total += f * 128 * u * u + 2 * 128  # deconvolution (or 1x1 conv at stride 1) + BN
        c = f
    return total


def ref_center_head(cin: int, outputs: dict[str, int]) -> int:
    """CenterHead: shared 3x3 conv (no bias) + BN to 64, then a SeparateHead per output:
    3x3 conv (no bias) + BN + ReLU, and a final 3x3 conv with bias."""
    shared = 9 * cin * 64 + 2 * 64
    return shared + sum(9 * 64 * 64 + 2 * 64 + 9 * 64 * o + o for o in outputs.values())


# -- ours -----------------------------------------------------------------------------------


def profile(spec: DatasetSpec) -> dict:
    return dict(yaml.safe_load((REPO / "params.yaml").read_text())["model"]["profiles"]["full"][spec.name])


def store_attrs(p: dict) -> dict:
    vs, pcr = p["voxel_size"], p["point_cloud_range"]
    shape = [round((pcr[i + 3] - pcr[i]) / vs[i]) for i in range(3)]
    return {"voxel_size": vs, "point_cloud_range": pcr, "grid_shape_zyx": shape[::-1]}


def main() -> None:
    rows = []
    for spec in (NUSCENES, WAYMO):
        p = profile(spec)
        attrs = store_attrs(p)
        student = Student(StudentConfig.from_params(p, attrs))
        d, ffn = int(p["d_model"]), int(p["dim_feedforward"])
        cin = 3 + len(p["point_features"]) + 6
        ref_student = ref_vfe(cin, list(p["vfe_filters"])) + ref_dsvt(d, ffn, p["window_shapes"], p["blocks"],
                                                                        p["z_strides"])
        rows.append((f"{spec.name} student (VFE + DSVT)", count(student), ref_student,
                     "pooling position: an MLP of the in-cell offset (ours) vs a per-slot table; "
                     "ours embeds (x, y, z) where DSVT embeds (x, y) on one-voxel-high windows"))
        pre = with_profile(load_section(REPO / "params.yaml", "pretrain"), "full", spec.name)
        blocks = tuple(int(b) for b in pre["decoder_blocks"])
        dec = GPicturePretrainer(student, ReconstructionConfig(alpha=(0.5,) * student.cfg.dsvt.num_layers,
                                                               decoder_blocks=blocks)).decoder
        w0 = p["window_shapes"][0]
        ref_dec = sum(2 * b * ref_encoder_layer(d, ffn, 2 if w0[2] == 1 else 3) for b in blocks)
        rows.append((f"{spec.name} decoder ({len(blocks)} DSVT stages)", count(dec), ref_dec,
                     "the GPICTURE decoder's DSVT stages on the first stage's windows, no pooling"))
        sec = with_profile(load_section(REPO / "params.yaml", "finetune", "detection"), "full", spec.name)
        head = DetectionTask().settings(sec, spec).head
        pcr = p["point_cloud_range"]
        grid = BEVGrid(pcr, (p["voxel_size"][0], p["voxel_size"][1]))
        ours = CenterPoint(student.bev_channels, [list(g) for g in spec.detection_groups], grid, head.head)
        outputs = {"center": 2, "center_z": 1, "dim": 3, "rot": 2}
        if spec is NUSCENES:
            outputs["vel"] = 2  # DSVT's Waymo head has no velocity output
        if head.head.iou_rectifier is not None:
            outputs["iou"] = 1
        shared = 9 * 384 * 64 + 2 * 64  # one shared conv however many class groups
        ref_head = ref_bev_res_backbone(student.bev_channels) + shared + sum(
            ref_center_head(384, {"hm": len(g), **outputs}) - shared for g in spec.detection_groups)
        rows.append((f"{spec.name} detection head (trunk + CenterHead)", count(ours), ref_head,
                     "ours has a velocity branch DSVT's Waymo head lacks (it predicts velocity for Waymo too)"
                     if spec is WAYMO else "CenterPoint's six class groups share the trunk and the shared conv"))
    width = max(len(r[0]) for r in rows)
    print(f"{'module':<{width}}  {'ours':>12}  {'reference':>12}  {'ratio':>7}  note")
    for name, ours_n, ref_n, note in rows:
        print(f"{name:<{width}}  {ours_n:>12,}  {ref_n:>12,}  {ours_n / ref_n:>7.4f}  {note}")


if __name__ == "__main__":
    main()
