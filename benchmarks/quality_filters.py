"""Documents per second of each quality scorer of `rain score` (rain.eval.quality) against the corpus tokenizer's
speed, on the C4 sample of ../shared/data (C4 web documents, ~2.4 KB each).

    python benchmarks/quality_filters.py [--docs 24] [--threads 2] [--max-tokens 512]

The models are randomly initialised at the shapes that matter for speed (weights do not change it): a Llama of
SmolLM-135M's shape as the perplexity reference, and a BERT of FineWeb-Edu's classifier's shape
(Snowflake arctic-embed-m: BERT-base, 110M) with one regression output; both read the text with a 16,384-token
BPE trained on the sample. Readability and the tokenizer run over every document; the models over --docs of them.
Prints one markdown row per scorer."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer as HFTokenizer

from rain.data.quality import readability_scorer
from rain.data.tokenizer import train_bpe
from rain.eval.quality import ClassifierScorer, PerplexityScorer

C4 = Path(__file__).resolve().parents[2] / "shared/data/corpus/c4_demo/c4_demo.jsonl"


def timed(fn, texts, repeat=1):
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(texts)
    return len(texts) * repeat / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = [json.loads(line)["text"] for line in C4.read_text().splitlines()]
    tok = train_bpe(texts, 16384)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(Path(tmp) / "tokenizer.json")
        wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_file(f"{tmp}/tokenizer.json"),
                                                       eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        vocab = len(wrapped)
        lm = transformers.LlamaConfig(vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                                      tie_word_embeddings=True, eos_token_id=wrapped.eos_token_id)
        bert = transformers.BertConfig(vocab_size=vocab, num_labels=1, pad_token_id=wrapped.pad_token_id)
        for name, model in (("lm", transformers.LlamaForCausalLM(lm)),
                            ("classifier", transformers.BertForSequenceClassification(bert))):
            model.save_pretrained(f"{tmp}/{name}")
            wrapped.save_pretrained(f"{tmp}/{name}")
        rows = [("tokenizer (corpus BPE, encode_batch)", timed(tok.encode_batch, texts, 5), len(texts) * 5),
                ("readability (Flesch)", timed(readability_scorer, texts, 3), len(texts) * 3)]
        few = texts[: args.docs]
        ppl = PerplexityScorer(f"{tmp}/lm", max_tokens=args.max_tokens, batch_size=8, device="cpu")
        rows.append((f"perplexity, Llama 135M, first {args.max_tokens} tokens", timed(ppl, few), len(few)))
        cls = ClassifierScorer(f"{tmp}/classifier", max_tokens=args.max_tokens, batch_size=8, device="cpu")
        rows.append((f"classifier, BERT-base 110M, first {args.max_tokens} tokens", timed(cls, few), len(few)))
    print(f"| scorer | documents/s ({args.threads} threads) | documents timed |\n|---|---|---|")
    for name, speed, n in rows:
        print(f"| {name} | {speed:,.1f} | {n} |")


if __name__ == "__main__":
    main()
