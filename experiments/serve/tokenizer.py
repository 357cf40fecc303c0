"""A small tokenizer made locally, for a server whose engines have none (emulated
workers, the locally made model): one word per token, made-up syllable words as many
as the model's vocabulary, saved in the Hugging Face format so that clients
(`vllm bench serve --tokenizer`, transformers) load it as they would a model's."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

SPECIALS = ("<unk>", "<s>", "</s>")
CONSONANTS = "bdfghjklmnprstvwz"
VOWELS = "aeiou"
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def words(count: int) -> list[str]:
    """`count` distinct lowercase words of one, two, three... syllables, always the same."""
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    made: list[str] = []
    for length in itertools.count(1):
        for parts in itertools.product(syllables, repeat=length):
            if len(made) == count:
                return made
            made.append("".join(parts))
    return made


def make_tokenizer(folder: str | Path, vocab_size: int) -> Path:
    """Write a word-level tokenizer of `vocab_size` ids to `folder` (tokenizer.json and
    tokenizer_config.json); ids 0-2 are `<unk>`, `<s>`, `</s>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if vocab_size <= len(SPECIALS):
        raise ValueError(f"vocab_size: expected more than {len(SPECIALS)} ids, got {vocab_size}")
    vocab = {token: index for index, token in enumerate([*SPECIALS, *words(vocab_size - len(SPECIALS))])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer.add_special_tokens(list(SPECIALS))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "bos_token": "<s>",
        "eos_token": "</s>", "model_max_length": 1_000_000, "chat_template": CHAT_TEMPLATE}, indent=1))
    return folder


class TextCodec:
    """Text to prompt ids and token ids to text, with the tokenizer in `folder`."""

    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"tokenizer: expected a tokenizer.json in {folder}")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.vocab_size = self.tokenizer.get_vocab_size()
        config = Path(folder) / "tokenizer_config.json"
        self.chat_template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def piece(self, token_id: int, first: bool) -> str:
        """The text a token adds to a stream (a space before every word but the first)."""
        text = self.tokenizer.id_to_token(token_id) or ""
        if text in SPECIALS:
            return ""
        return text if first else " " + text

    def chat(self, messages: list[dict]) -> str:
        """Messages as one prompt, by the tokenizer's chat template."""
        from jinja2 import Template

        template = self.chat_template or CHAT_TEMPLATE
        return Template(template).render(messages=messages, add_generation_prompt=True)
