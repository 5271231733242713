"""Tokenised, batched training data (the task files themselves are read by `adapler_export.data`)."""
from __future__ import annotations

import numpy as np
import torch

from adapler_export.data import Split
from adapler_export.serving.tokenization import Cut, encode_rows

# Length grouping sorts the examples of this many batches at a time by length: batches of similar lengths
# (little padding) while the data order stays random at the scale of an epoch (as in HF's length grouping).
MEGABATCH_BATCHES = 50


def length_grouped_batches(lengths, batch_size: int, seed: int, megabatch_batches: int = MEGABATCH_BATCHES) -> list:
    """A random partition of range(len(lengths)) into batches of similar lengths.

    Shuffle, cut into mega-batches of `megabatch_batches` batches, sort each mega-batch by length, cut it
    into batches, then shuffle the order of all batches (so long and short batches alternate at random).
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    span = batch_size * megabatch_batches
    batches = []
    for start in range(0, len(order), span):
        chunk = order[start: start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i: i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ----- tokenisation and batching ------------------------------------------------------------------------
class EncodedDataset(torch.utils.data.Dataset):
    """Pre-tokenised examples (unpadded; sentence pairs with their token types); `collate` pads each batch to
    its own longest row."""

    def __init__(self, tokenizer, split: Split, cut: Cut | int, saliency: list | None = None):
        cut = Cut.of(cut)  # the max length and truncation rule (a bare max length: "head")
        rows = encode_rows(tokenizer, split.texts, cut.max_length, split.pairs, cut.truncation)
        self.input_ids, self.token_type_ids = rows.ids, rows.type_ids
        self.labels = split.labels
        self.saliency = saliency
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index):
        item = {"input_ids": self.input_ids[index], "label": int(self.labels[index]), "index": index}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[index]
        if self.saliency is not None:
            item["saliency"] = self.saliency[index]
        return item

    def collate(self, items):
        longest = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, it in enumerate(items):
            ids[row, : len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[row, : len(it["input_ids"])] = 1
        batch = {"input_ids": ids, "attention_mask": mask,
                 "labels": torch.tensor([it["label"] for it in items]),
                 "index": torch.tensor([it["index"] for it in items])}
        if self.token_type_ids is not None:  # sentence pairs; single texts leave them to the model (all 0)
            types = torch.zeros((len(items), longest), dtype=torch.long)
            for row, it in enumerate(items):
                types[row, : len(it["token_type_ids"])] = torch.tensor(it["token_type_ids"])
            batch["token_type_ids"] = types
        if self.saliency is not None:
            sal = torch.zeros((len(items), longest), dtype=torch.float32)
            for row, it in enumerate(items):
                sal[row, : len(it["saliency"])] = torch.as_tensor(it["saliency"])
            batch["saliency"] = sal
        return batch

    def loader(self, batch_size: int, shuffle: bool, seed: int = 0, length_grouped: bool = False):
        """Batches in a deterministic order for a given seed; `length_grouped` (training): batches of
        similar lengths, see :func:`length_grouped_batches`."""
        if length_grouped:
            batches = length_grouped_batches([len(ids) for ids in self.input_ids], batch_size, seed)
            return torch.utils.data.DataLoader(self, batch_sampler=batches, collate_fn=self.collate)
        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                           collate_fn=self.collate)
