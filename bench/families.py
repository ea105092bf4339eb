"""The model families side by side at one preset: parameters, counted TFLOPs and measured time per tile.

For each family (HSI-VAR, RestoreVAR, VarFormer; ``--families``) it builds the preset (seed 0, or a published
model per family with ``--model FAMILY=DIR``), counts the forward FLOPs of one greedy restoration of one S×S×C
tile (:func:`hsivar.info.model_info`: condition, classifier, autoregressive loop with the KV cache, the family's
continuous refiner, decoder or VarFormer's U-Net, fusion head) and measures milliseconds per tile of
``model.restore`` at each batch size (median of ``--repeats`` after two warm-ups). Greedy decoding, as the
Restorer restores. The last line printed is one JSON object with every figure.

    python bench/families.py --preset tiny --bands 31
    python bench/families.py --preset paper --device cuda --batch-sizes 1,8
"""

from __future__ import annotations

import json

import torch
from _common import bench_parser, check_device, machine_info, median_time

from hsivar.config import FAMILIES
from hsivar.info import model_info
from hsivar.models.base import RestorationModel
from hsivar.models.build import build_model
from hsivar.presets import preset
from hsivar.publish import load_published


def family_figures(model: RestorationModel, device: torch.device, batch_sizes: list[int],
                   repeats: int) -> dict[str, object]:
    """Parameters (M), counted TFLOPs per tile (on the meta device, :func:`hsivar.info.model_info`) and measured ms
    per tile at each batch size of ``model``."""
    info = model_info(model.cfg)
    timing = {}
    for bs in batch_sizes:
        x = torch.rand(bs, *model.cfg.cube_shape, device=device)
        with torch.no_grad():
            sec = median_time(lambda: model.restore(x, task="auto"), repeats, device)  # noqa: B023
        timing[f"batch_{bs}"] = {"ms_per_tile": 1e3 * sec / bs, "tiles_per_s": bs / sec}
    return {"params_m": info["params_total"] / 1e6,
            "params_by_part_m": {k: v / 1e6 for k, v in info["params"].items()},
            "tflops_per_tile": info["tflops_per_cube"], "tflops_by_part": info["tflops_by_part"], "timing": timing}


def main() -> None:
    """Parse arguments, print the figures, end with one JSON line."""
    ap = bench_parser(__doc__)
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma list of model families")
    ap.add_argument("--model", action="append", default=[], help="FAMILY=DIR: a published model of that family "
                    "instead of the fresh preset (repeatable)")
    ap.add_argument("--batch-sizes", default="1,8", help="comma list of tiles per forward pass")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    check_device(args.device)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not families or any(f not in FAMILIES for f in families):
        ap.error(f"--families takes names from {','.join(FAMILIES)}")
    published = dict(m.split("=", 1) for m in args.model if "=" in m)
    if len(published) != len(args.model) or any(f not in FAMILIES for f in published):
        ap.error("--model takes FAMILY=DIR with a known family")
    device = torch.device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    report: dict[str, object] = {"bench": "families", "preset": args.preset, "bands": args.bands,
                                 "device": args.device, "results": {}}
    for family in families:
        torch.manual_seed(0)
        if family in published:
            model, _ = load_published(published[family])
            if model.cfg.family != family:
                ap.error(f"--model {family}={published[family]} holds a {model.cfg.family} model")
        else:
            model = build_model(preset(args.preset, bands=args.bands, family=family))
        model = model.to(device).eval()
        fig = family_figures(model, device, batch_sizes, args.repeats)
        report["results"][family] = fig  # type: ignore[index]
        tile = "×".join(map(str, model.cfg.cube_shape[::-1]))
        times = "  ".join(f"batch {k.split('_')[1]}: {v['ms_per_tile']:.1f} ms/tile" for k, v in fig["timing"].items())
        print(f"{family:<10} {args.preset} {tile}: {fig['params_m']:.3f} M params, "
              f"{fig['tflops_per_tile']:.5f} TFLOPs/tile, {times}")
    report["machine"] = machine_info(args.device)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
