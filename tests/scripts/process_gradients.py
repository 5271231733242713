"""Run by tests/test_processes.py, alone or under torchrun: one stage-3 step's gradients of one global batch.

Every process builds the same tiny AdapLeR model and batch (seeded), takes its rows with
`training.common.local_rows`, computes stage 3's two gradients (`compute_gradients`, its loss scaled by its share
of the rows) and sums them with `average_gradients`; the main process saves every gradient to argv[1].
"""
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))  # tests/: tiny_models

from tiny_models import tiny_model  # noqa: E402
from training.common import average_gradients, local_rows, make_accelerator  # noqa: E402
from training.stage3_adapler import Stage3Config, compute_gradients, main_parameters  # noqa: E402

ROWS, LENGTH = 7, 12  # an odd batch: the two processes take 3 and 4 rows

accelerator = make_accelerator(seed=0)
torch.manual_seed(0)
model = tiny_model(seed=0, eta=0.3, cp_gain=1.0)
model.train()
for module in model.modules():  # each process would draw its own dropout masks for its rows
    if isinstance(module, torch.nn.Dropout):
        module.p = 0.0
generator = torch.Generator().manual_seed(1)
lengths = torch.randint(3, LENGTH + 1, (ROWS,), generator=generator)
mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
batch = {"input_ids": torch.randint(5, 150, (ROWS, LENGTH), generator=generator) * mask,
         "attention_mask": mask, "labels": torch.randint(0, 2, (ROWS,), generator=generator),
         "saliency": torch.rand(ROWS, LENGTH, generator=generator) * mask}
local, share = local_rows(accelerator, batch)
compute_gradients(model, local, 100.0, Stage3Config(), scale=share)
parameters = [p for _, p in main_parameters(model)] + [model.eta, model.theta]
average_gradients(accelerator, parameters)
if accelerator.is_main_process:
    torch.save({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, sys.argv[1])
print(f"process {accelerator.process_index} of {accelerator.num_processes}: {len(local['labels'])} rows")
