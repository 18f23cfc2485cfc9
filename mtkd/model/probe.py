"""Whether a model can take a training step on a batch of a single image.

BatchNorm in training mode normalises with the batch's own statistics; where it sees one value
per channel (a batch of one reaching a 1 x 1 map, e.g. MobileNetV2's last stage at 32 px, or a
BatchNorm1d embedding) it raises instead. An epoch whose last batch holds one sample would then
crash mid-run, so the training loader leaves such a batch out (see ``make_train_loader``).
"""

from __future__ import annotations

import torch
from torch import nn

ONE_VALUE = "Expected more than 1"  # the start of BatchNorm's and InstanceNorm's error


@torch.no_grad()
def smallest_train_batch(model: nn.Module, image_size: int) -> int:
    """1 when ``model`` trains on one image at ``image_size``, else 2.

    Runs one forward pass in training mode on a blank image; the model's buffers (BatchNorm
    running statistics), its mode and the global random generators are left as they were, so
    asking changes nothing about the run. A forward pass that fails for any other reason
    answers 1: the loader then batches as it always did, and training reports the failure.
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    was_training = model.training
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            model.train()
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    except ValueError as exc:
        return 2 if str(exc).startswith(ONE_VALUE) else 1
    except Exception:
        return 1
    finally:
        model.train(was_training)
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])
    return 1
