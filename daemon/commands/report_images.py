"""The report's pictures: a few eval images with the annotators' boxes, and beside them the served model's boxes.

The images are the eval split of the newest round folder still on disk (``work/rounds/N/annotations.jsonl``), read
through :mod:`~odal.daemon.sources.safe_files` (inside the image roots, regular files, ``[limits]`` bytes and
pixels), decoded at most :data:`DECODE_SIDE` pixels a side and written as JPEGs of at most :data:`MAX_SIDE`.
Detections come from the server named by ``[serving] address`` (one Predict per image, each bounded in time); when
there is none, or it does not answer, :func:`examples` says why and the page shows the annotators' boxes alone.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from odal.daemon.config import Config
from odal.daemon.system.atomic import atomic_write_bytes

MAX_IMAGES = 6
MAX_SIDE = 480  # pixels a side of each drawn image in the report
DECODE_SIDE = 1024  # what is decoded (and sent to the server), as the queue does
MIN_SCORE = 0.3  # detections drawn
MAX_DRAWN = 20  # at most this many detections drawn per image
PREDICT_SECONDS = 10.0
TRUTH, MODEL = "#1f9d55", "#e3342f"


def eval_annotations(work_dir: Path, limit: int = MAX_IMAGES) -> tuple[int | None, list[dict]]:
    """(round, up to ``limit`` eval annotations) of the newest round folder that has some; (None, []) if none."""
    folders = sorted((p for p in (work_dir / "rounds").glob("*") if p.name.isdigit()), key=lambda p: -int(p.name))
    for folder in folders:
        found = []
        try:
            with open(folder / "annotations.jsonl", encoding="utf-8") as lines:
                for line in lines:
                    item = json.loads(line)
                    if item.get("split") == "eval":
                        found.append(item)
                        if len(found) >= limit:
                            break
        except (OSError, ValueError):
            continue
        if found:
            return int(folder.name), found
    return None, []


def _pixels(path: str, roots: list[Path]):
    from odal.daemon.sources import images, safe_files

    _, _, data = safe_files.read_file(path, roots)
    return images.pixels_for_scoring(data, DECODE_SIDE)


def detect(cfg: Config, pixels: list) -> tuple[list | None, int | None, str]:
    """(detections per image, the version that answered, a note) from the configured server; (None, None, why)
    when there is no server or it does not answer."""
    if not cfg.serving_address:
        return None, None, "no [serving] address in odal.toml: the model's boxes are not shown"
    from odal.serving.client import ServingClient
    from odal.serving.errors import ServingError

    try:
        with ServingClient(cfg.serving_address, timeout=PREDICT_SECONDS, retries=0) as client:
            client.model_status(cfg.model_name, timeout=3.0)  # up and serving the model, or say so at once
            found = [client.predict(cfg.model_name, image, timeout=PREDICT_SECONDS) for image in pixels]
    except ServingError as error:
        return None, None, (f"the server at {cfg.serving_address} did not answer ({error.code}: "
                            f"{error.message[:200]}): the model's boxes are not shown")
    version = found[0].model_version if found else None
    return found, version, f"detections of version {version} from the server at {cfg.serving_address}"


def _draw(pixels, boxes: list[tuple[float, float, float, float, str]], colour: str) -> bytes:
    """A JPEG of ``pixels`` at most MAX_SIDE a side with ``boxes`` (normalised ymin, xmin, ymax, xmax, text)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(pixels)
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for ymin, xmin, ymax, xmax, text in boxes:
        corners = (xmin * width, ymin * height, xmax * width, ymax * height)
        draw.rectangle(corners, outline=colour, width=3)
        left, top = corners[0] + 3, max(corners[1] - 12, 0)
        draw.rectangle(draw.textbbox((left, top), text), fill=colour)
        draw.text((left, top), text, fill="white")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def examples(cfg: Config, labels: list[str], out_dir: Path, roots: list[Path]) -> dict:
    """Draw the examples into ``out_dir``; returns {"round", "note", "version", "items": [{"name", "truth",
    "model" (file names relative to out_dir's parent, or None), "boxes", "detections", "error"}]}."""
    round_id, annotations = eval_annotations(cfg.work_dir)
    if not annotations:
        return {"round": None, "version": None, "items": [],
                "note": "no eval images yet (no round folder with an eval split is left in the work dir)"}
    loaded, items = [], []
    for annotation in annotations:
        name = Path(annotation["image_path"]).name
        try:
            loaded.append((annotation, name, _pixels(annotation["image_path"], roots)))
        except Exception as error:  # noqa: BLE001 - a missing or refused image is named on the page, not fatal
            items.append({"name": name, "truth": None, "model": None, "error": f"{type(error).__name__}: {error}"})
    detections, version, note = detect(cfg, [pixels for _, _, pixels in loaded])
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("eval-*.jpg"):  # a previous report's
        old.unlink()
    for index, (annotation, name, pixels) in enumerate(loaded):
        truth = [(b["ymin"], b["xmin"], b["ymax"], b["xmax"], b["label"]) for b in annotation["boxes"]]
        truth_file = out_dir / f"eval-{index}-annotators.jpg"
        atomic_write_bytes(truth_file, _draw(pixels, truth, TRUTH))
        item = {"name": name, "truth": f"{out_dir.name}/{truth_file.name}", "model": None, "error": None,
                "boxes": len(truth), "detections": None}
        if detections is not None:
            found = detections[index]
            drawn = [(*map(float, found.boxes[k]), f"{_label(labels, int(found.classes[k]))} {found.scores[k]:.2f}")
                     for k in range(min(int(found.num), MAX_DRAWN)) if found.scores[k] >= MIN_SCORE]
            model_file = out_dir / f"eval-{index}-model.jpg"
            atomic_write_bytes(model_file, _draw(pixels, drawn, MODEL))
            item.update(model=f"{out_dir.name}/{model_file.name}", detections=len(drawn))
        items.append(item)
    return {"round": round_id, "version": version, "note": note, "items": items}


def _label(labels: list[str], class_id: int) -> str:
    return labels[class_id - 1] if 1 <= class_id <= len(labels) else f"class {class_id}"
