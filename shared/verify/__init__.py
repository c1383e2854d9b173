"""Verifiers of TriPosT rationales: scripted ones (multistep arithmetic, word sorting) and an
LLM one, giving one :class:`Verdict` and one feedback sentence shape. Plain Python::

    from shared.verify import scripted_verifier
    verdict = scripted_verifier("word_sorting").verify(question, rationale)
    verdict.correct, verdict.step, verdict.feedback
"""

from shared.verify.arithmetic import ArithmeticVerifier
from shared.verify.llm import llm_messages, llm_verify, parse_llm_answer
from shared.verify.registry import (
    SCRIPTED,
    ScriptedVerifier,
    VerifierKind,
    resolve_task,
    scripted_verifier,
)
from shared.verify.steps import QuestionError, Step, Unparseable, split_steps
from shared.verify.verdict import ERROR_MARKER, Verdict, parse_feedback
from shared.verify.word_sorting import WordSortingVerifier

__all__ = [
    "ERROR_MARKER",
    "SCRIPTED",
    "ArithmeticVerifier",
    "QuestionError",
    "ScriptedVerifier",
    "Step",
    "Unparseable",
    "Verdict",
    "VerifierKind",
    "WordSortingVerifier",
    "llm_messages",
    "llm_verify",
    "parse_feedback",
    "parse_llm_answer",
    "resolve_task",
    "scripted_verifier",
    "split_steps",
]
