"""The windows llama-finetune trains on, made from a chat model's exchanges so that it learns the
answers and nothing else: each exchange is the tokens of its prompt (what the model is given)
followed by those of its answer (what it writes), and a position is trained only where the token
after it belongs to an answer.

Exchanges are packed whole into windows of `context` tokens (first fit, in their order), so no
answer is cut from its question and each token is seen once an epoch; the rest of a window is
padding, never trained. An exchange longer than a window has one of its own, cut at the window's
end. The file is the one llama-finetune reads as patched by scripts/llama.cpp-masked-training.patch:
`TRAINWIN`, then little-endian int32 values: context, the number of windows, and for each window
its `context` input tokens followed by its `context` labels (the token to learn after each
position, or -1).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"TRAINWIN"
NOT_TRAINED = -1
PADDING = 0  # any token: padding comes after the window's exchanges, which cannot attend to it


@dataclass(frozen=True)
class TokenizedExchange:
    prompt: Sequence[int]
    answer: Sequence[int]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.answer)


@dataclass
class Windows:
    context: int
    inputs: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    places: list[tuple[int, int]] = field(default_factory=list)  # of each exchange: its window, its first position
    cut: int = 0  # exchanges longer than a window, trained up to the window's end

    @property
    def trained(self) -> int:
        """Positions whose next token is learned: the answer tokens that fit in the windows."""
        return sum(label != NOT_TRAINED for window in self.labels for label in window)

    @property
    def positions(self) -> int:
        return len(self.inputs) * self.context

    def write(self, path: Path) -> None:
        with path.open("wb") as out:
            out.write(MAGIC + struct.pack("<ii", self.context, len(self.inputs)))
            for inputs, labels in zip(self.inputs, self.labels, strict=True):
                out.write(struct.pack(f"<{self.context}i", *inputs))
                out.write(struct.pack(f"<{self.context}i", *labels))


def pack(exchanges: Sequence[TokenizedExchange], context: int) -> Windows:
    windows = Windows(context)
    free: list[int] = []  # room left in each window
    open_windows: list[int] = []  # those with room for the shortest exchange
    shortest = min((len(e) for e in exchanges), default=0)
    for exchange in exchanges:
        tokens = [*exchange.prompt, *exchange.answer]
        size = min(len(tokens), context)
        windows.cut += len(tokens) > context
        index = next((i for i in open_windows if free[i] >= size), None)
        if index is None:
            index = len(windows.inputs)
            windows.inputs.append([PADDING] * context)
            windows.labels.append([NOT_TRAINED] * context)
            free.append(context)
            open_windows.append(index)
        start = context - free[index]
        windows.places.append((index, start))
        inputs, labels = windows.inputs[index], windows.labels[index]
        inputs[start:start + size] = tokens[:size]
        for position in range(max(0, len(exchange.prompt) - 1), min(size, len(tokens) - 1)):
            labels[start + position] = tokens[position + 1]
        free[index] -= size
        if free[index] < shortest:
            open_windows.remove(index)
    return windows
