"""Prediction: load a run's best checkpoint, segment images at the trained size, upsample
the logits to each image's own size, and draw image | colour mask | overlay with a legend.
The engine's final metrics use the same upsampling (`native_logits`), so they are scored at
the masks' own resolution exactly as `ablate predict` + `ablate evaluate` would score them.
A checkpoint is data from elsewhere: loading one imports no code it names (`check_model_code`)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, UnidentifiedImageError

from ablate.errors import AblateError
from ablate.models import create_model, model_params
from ablate.models._external import user_code
from ablate.record import CHECKPOINT_FILE
from ablate.synthetic import voc_palette

_PALETTE = np.array(voc_palette(256), dtype=np.uint8).reshape(256, 3)


def model_code(model: str) -> str | None:
    """The module or file of user code that rebuilding model `model` would import and run;
    None for ablate's own models and smp's."""
    return user_code(model)


def check_model_code(stored: str, where: Path, *, named_model: str | None = None,
                     trust_model_code: bool = False) -> None:
    """Refuse to rebuild a checkpoint's model `stored` when that would run user code the user
    did not name: a checkpoint (downloaded, shared, in an artifact store) could otherwise
    name any module on sys.path or file on disk and have it run. `named_model` is the model
    the user named for this load (it must be the stored one); `trust_model_code` allows any."""
    if named_model is not None and named_model != stored:
        raise AblateError(f"--model {named_model}: {where} holds model {stored}; pass --model {stored} "
                          "or leave --model out")
    module = model_code(stored)
    if module is None or trust_model_code or named_model == stored:
        return
    raise AblateError(f"{where}: its model {stored} is code from {module}, which ablate runs only when "
                      f"you name it: pass --model {stored} (the same model) or --trust-model-code")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", *, named_model: str | None = None,
             trust_model_code: bool = False) -> tuple[torch.nn.Module, dict]:
    """The trained model (eval mode) and the checkpoint's metadata (config, class names, size).
    A model that is user code is rebuilt only when named (`check_model_code`)."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise AblateError(f"--run {run_dir}: no {CHECKPOINT_FILE} there; give a folder written by `ablate train` or `ablate grid`")
    try:
        # weights_only: unpickling reads tensors and plain data only, so the file itself runs no code
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise AblateError(f"{path}: cannot load checkpoint ({type(exc).__name__}); retrain the run") from None
    config = ckpt["config"]
    check_model_code(config["model"], path, named_model=named_model, trust_model_code=trust_model_code)
    model = create_model(config["model"], ckpt["num_classes"], **inference_args(config["model"], config["model_args"]))
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval(), ckpt


def gallery_predictions(model: torch.nn.Module, dataset, run_dir: str | Path) -> Path:
    """<run_dir>/predictions.png: a trained model's predictions of the report gallery's val
    images (`gallery.gallery_indices`, at the dataset's working size, as the model was
    trained), which a report then draws without the checkpoint. The engine hands the model
    over (`fit(on_model=...)`), so the checkpoint is not loaded back for it."""
    from ablate import gallery, store

    val = dataset.splits["val"]
    idx = gallery.gallery_indices(len(val))
    images = val.images[idx]
    with torch.inference_mode():
        masks = predict_masks(model, images, tuple(images.shape[-2:]))
    return gallery.write_predictions_png(Path(run_dir) / store.PREDICTIONS_FILE, [m.numpy() for m in masks],
                                          [val.ids[i] for i in idx])


def inference_args(model: str, model_args: dict) -> dict:
    """The model's arguments for rebuilding it around a checkpoint: pretrained weights only
    matter for initialisation (the checkpoint has every weight), so none are loaded or
    downloaded, and freezing (refused with random weights) does not matter for inference."""
    params = model_params(model)
    args = dict(model_args)
    if "weights" in params:
        args["weights"] = "none"
    if "freeze_encoder" in params:
        args["freeze_encoder"] = False
    return args


def forward_logits(model: torch.nn.Module, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Images [N,3,H,W] at the working size, values 0..255 (uint8 or float) → float32 logits [N,K,H,W]."""
    device = next(model.parameters()).device
    x = images.to(device).float().div_(255.0).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        return model(x).float()


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Logits [N,K,h,w] → [N,K,H,W], bilinear (argmax after this, never before)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


@torch.inference_mode()
def native_logits(model: torch.nn.Module, split, *, batch_size: int,
                  precision: str = "fp32") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each image of a dataset split, in order: its logits [1,K,h,w] from the working-size
    image, upsampled to the size of its native mask, and that mask [1,h,w] (on the model's device)."""
    device = next(model.parameters()).device
    if split.native_masks is None:
        raise ValueError("this split keeps no native-resolution masks")
    for start in range(0, len(split), batch_size):
        logits = forward_logits(model, split.images[start:start + batch_size], precision)
        for i in range(logits.shape[0]):
            mask = split.native_masks[start + i].to(device)
            yield upsample_logits(logits[i:i + 1], tuple(mask.shape)), mask[None]


def predict_split(model: torch.nn.Module, split, *, batch_size: int = 16, precision: str = "fp32") -> list[torch.Tensor]:
    """Label masks (uint8, CPU) for a dataset split, each at its native mask's resolution."""
    return [logits.argmax(1)[0].to(torch.uint8).cpu() for logits, _ in
            native_logits(model, split, batch_size=batch_size, precision=precision)]


@torch.inference_mode()
def predict_masks(model: torch.nn.Module, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 images [N,3,H,W] → labels [N,H,W]: resized to the trained `size` for the model,
    logits upsampled (bilinear) back to H×W before the argmax."""
    h, w = images.shape[-2:]
    x = images.float()
    if (h, w) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    logits = forward_logits(model, x)
    return upsample_logits(logits, (h, w)).argmax(1).to(torch.uint8).cpu()


def colorize(mask: np.ndarray) -> np.ndarray:
    """Index mask → RGB with the PASCAL VOC palette."""
    return _PALETTE[np.asarray(mask)]


def side_by_side(image: np.ndarray, mask: np.ndarray, class_names: list[str]) -> Image.Image:
    """image | colour mask | 50% overlay, and a legend of the classes present."""
    colour = colorize(mask)
    overlay = (0.5 * image + 0.5 * colour).astype(np.uint8)
    h, w = mask.shape
    present = [int(k) for k in np.unique(mask) if k < len(class_names)]
    legend_h = 18 * len(present) + 8
    canvas = Image.new("RGB", (3 * w + 16, h + legend_h), "white")
    for i, panel in enumerate((image, colour, overlay)):
        canvas.paste(Image.fromarray(panel), (i * (w + 8), 0))
    draw = ImageDraw.Draw(canvas)
    for row, k in enumerate(present):
        y = h + 4 + 18 * row
        draw.rectangle([4, y, 18, y + 14], fill=tuple(int(c) for c in _PALETTE[k]), outline="black")
        draw.text((24, y + 1), class_names[k], fill="black")
    return canvas


def read_image(path: str | Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise AblateError(f"--image {path}: file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise AblateError(f"--image {path}: cannot read image ({exc})") from None


def predict_file(run_dir: str | Path, image_path: str | Path, out: str | Path, *, named_model: str | None = None,
                 trust_model_code: bool = False) -> list[str]:
    """Segment one image file, write the side-by-side PNG to `out`, return the class names found.
    `named_model`, `trust_model_code`: what allows a user-code model (`load_run`)."""
    model, ckpt = load_run(run_dir, named_model=named_model, trust_model_code=trust_model_code)
    image = read_image(image_path)
    mask = predict_masks(model, torch.from_numpy(image).permute(2, 0, 1)[None], tuple(ckpt["image_size"]))[0].numpy()
    names = ckpt["class_names"]
    picture = side_by_side(image, mask, names)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(tmp)
    tmp.replace(out)  # atomic: no half-written PNG
    return [names[k] for k in np.unique(mask).tolist() if k < len(names)]
