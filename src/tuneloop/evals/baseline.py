"""The classical baseline on a label set: TF-IDF features and logistic regression, trained in-process.

Features are the TF-IDF of word 1–2-grams and of character 2–5-grams within word boundaries
(``char_wb``), side by side; a multinomial logistic regression maps them to labels. It learns from
the training file's (last user message → last assistant message) pairs and answers each held-out
example's last user message, so every report can say whether fine-tuning beat the simple baseline.
Needs scikit-learn (``pip install 'tuneloop[eval]'``), imported only when a baseline is fit.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.render import content_text

#: The candidate's name in reports.
NAME = "tf-idf + logistic regression"
#: What reports show as its model.
MODEL = "scikit-learn (in-process)"
#: Printed once when scikit-learn is missing.
MISSING_NOTE = "note: install 'tuneloop[eval]' (scikit-learn) for the TF-IDF + logistic regression baseline"


def available() -> bool:
    """Whether scikit-learn can be imported."""
    return importlib.util.find_spec("sklearn") is not None


def last_text(messages: Sequence[dict[str, Any]], role: str) -> str | None:
    """The text of the last message of ``role``, None when there is none."""
    return next((content_text(m.get("content")) for m in reversed(messages) if m.get("role") == role), None)


def training_pairs(conversations: Sequence[Sequence[dict[str, Any]]]) -> tuple[list[str], list[str]]:
    """(last user message, last assistant message) of each conversation that has both."""
    texts, labels = [], []
    for messages in conversations:
        text, label = last_text(messages, "user"), last_text(messages, "assistant")
        if text is not None and label is not None and label.strip():
            texts.append(text)
            labels.append(label.strip())
    return texts, labels


@dataclass
class TfidfClassifier:
    """TF-IDF (word 1–2-grams ∪ char_wb 2–5-grams) → logistic regression; one label only → that label."""

    C: float = 10.0
    max_iter: int = 2000
    _pipeline: Any = field(default=None, init=False, repr=False)
    _constant: str | None = field(default=None, init=False)

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> TfidfClassifier:
        """Learn ``labels[i]`` from ``texts[i]``."""
        if not texts or len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts for {len(labels)} labels")
        if len(set(labels)) == 1:  # logistic regression needs two classes
            self._constant = labels[0]
            return self
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union

        features = make_union(
            TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
        )
        self._pipeline = make_pipeline(features, LogisticRegression(C=self.C, max_iter=self.max_iter))
        self._pipeline.fit(list(texts), list(labels))
        return self

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The label of each text."""
        if self._constant is not None:
            return [self._constant] * len(texts)
        if self._pipeline is None:
            raise ValueError("fit the classifier first")
        return [str(label) for label in self._pipeline.predict(list(texts))]


def fit_predict(
    texts: Sequence[str], labels: Sequence[str], questions: Sequence[str]
) -> tuple[list[str], list[float], float]:
    """Fit on (texts, labels), then answer each question alone: (answers, seconds per answer, fit seconds)."""
    started = time.perf_counter()
    classifier = TfidfClassifier().fit(texts, labels)
    fit_s = time.perf_counter() - started
    answers, latencies = [], []
    for question in questions:
        started = time.perf_counter()
        answers.append(classifier.predict([question])[0])
        latencies.append(time.perf_counter() - started)
    return answers, latencies, fit_s
