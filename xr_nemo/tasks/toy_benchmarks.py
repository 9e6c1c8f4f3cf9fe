"""The demo's toy world (`xr_nemo.demo.toy_world`): held-out arithmetic as text and as pictures,
judged as math, and the pictures to transcribe, judged by exact match (ours). Local files only:
`{id, question, answer[, image, expression, shown_answer]}`: the item's expression and, for a picture
handed to another problem's question, that picture's answer ride along in the item's `meta` (and so in
the predictions), for the demo's report to check the reasoning against."""

from __future__ import annotations

from xr_nemo.data.records import Record
from xr_nemo.tasks.benchmark import Benchmark, EvalItem, record_images, register, text

CARRIED = ("expression", "shown_answer")


@register
class ArithText(Benchmark):
    name, hub_id = "arith_text", None

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        images = record_images(record, ["image"]) if self.modality == "image" else ()
        return EvalItem(
            f"{self.name}-{fields.get('id', index)}",
            text(fields.get("question"), "'question'", where),
            text(fields.get("answer"), "'answer'", where),
            meta={key: text(fields[key], repr(key), where) for key in CARRIED if key in fields},
            images=images,
        )


@register
class ArithImage(ArithText):
    name, modality = "arith_image", "image"


@register
class ArithRead(ArithText):
    """Transcription: the answer is the expression itself, glyph for glyph."""

    name, modality, free_form = "arith_read", "image", "exact"
