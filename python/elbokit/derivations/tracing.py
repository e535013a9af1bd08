"""The trace: every line of a derivation evaluated on (model, x) and every relation checked
(:func:`trace`, :class:`TraceResult`, :class:`Row`)."""
from __future__ import annotations

import html
from dataclasses import dataclass

from .._validation import check_int
from .estimates import Z_SIGMAS, Estimate, _check
from .library import Derivation, _context, get


# ---- the trace ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One row of a trace: a line or a term, its estimate, and the check of its relation to the next line."""
    index: int
    latex: str
    text: str
    estimate: Estimate
    is_term: bool = False
    relation: str | None = None
    why: str = ""
    difference: float | None = None
    difference_se: float | None = None
    holds: bool | None = None

    @property
    def agrees(self) -> bool | None:
        """Whether a Monte-Carlo line agrees with its closed form within 4 s.e. (None without one)."""
        e = self.estimate
        if e.exact is None or e.units is None:
            return None
        tol = e.rtol * max(1.0, abs(e.exact))
        return bool(abs(e.value - e.exact) <= Z_SIGMAS * e.se + tol)


def _fmt(v, se=None):
    if v is None:
        return ""
    s = f"{v:.5f}" if abs(v) < 1e4 else f"{v:.5g}"
    return s if se is None or se == 0 else f"{s} ± {se:.2g}"


def _mark(b):
    return "" if b is None else ("✓" if b else "✗")


@dataclass
class TraceResult:
    """Every line of a traced derivation: value ± s.e. (nats, the mean over the n points), the closed
    form where there is one, and whether each relation holds within its error (see the module)."""
    derivation: Derivation
    rows: list
    model: str
    n: int
    n_samples: int
    seed: int

    @property
    def lines(self) -> list:
        return [r for r in self.rows if not r.is_term]

    @property
    def relations_hold(self) -> bool:
        """Every relation between lines holds (a "?" — an unreliable estimate — counts as not holding)."""
        return all(r.holds is True for r in self.lines if r.relation)

    @property
    def exact_agree(self) -> bool:
        """Every Monte-Carlo line and term with a closed form agrees with it within 4 s.e."""
        return all(r.agrees is not False for r in self.rows)

    @property
    def ok(self) -> bool:
        return self.relations_hold and self.exact_agree

    def undecided(self) -> list:
        """The relations left undecided ("?"): an estimate on either side has too few effective samples."""
        return [f"line {r.index} {r.relation} the next: difference {r.difference:.6g} ± {r.difference_se:.3g} "
                f"(unreliable estimate): {r.text}" for r in self.rows if r.relation and r.holds is None]

    def failures(self) -> list:
        """Plain-text descriptions of every relation that fails and every disagreement with a closed form."""
        out = []
        for r in self.rows:
            if r.relation and r.holds is False:
                out.append(f"line {r.index} {r.relation} the next: difference {r.difference:.6g} ± {r.difference_se:.3g} "
                           f"(fails): {r.text}")
            if r.agrees is False:
                out.append(f"line {r.index}: {r.estimate.value:.6g} ± {r.estimate.se:.3g} against the closed form "
                           f"{r.estimate.exact:.6g}: {r.text}")
        return out

    def values(self) -> list:
        """The lines' values (floats), in order."""
        return [r.estimate.value for r in self.lines]

    def __repr__(self) -> str:
        d = self.derivation
        head = (f"trace of {d.name!r}: {d.title} (MATH.md {d.section}) on {self.model}, n={self.n}, "
                f"n_samples={self.n_samples}, seed={self.seed} [nats, mean over the points; ± Monte-Carlo s.e.]")
        w = min(72, max(len(r.text) for r in self.rows) + 4)
        lines = [head, f"{'':3s} {'line':{w}s} {'value':>22s} {'exact':>12s} {'':2s}"]
        for r in self.rows:
            label = ("    · " + r.text) if r.is_term else r.text
            lines.append(f"{'' if r.is_term else r.index:>3} {label[:w]:{w}s} {_fmt(r.estimate.value, r.estimate.se):>22s} "
                         f"{_fmt(r.estimate.exact) if r.estimate.units is not None else '':>12s} {_mark(r.agrees):2s}")
            if r.relation:
                verdict = {True: "holds", False: "FAILS", None: "? (unreliable estimate)"}[r.holds]
                lines.append(f"{'':3s}   {r.relation}  [{r.why}]  difference {r.difference:.3g} ± {r.difference_se:.2g}: {verdict}")
        if self.ok:
            lines.append("all relations hold")
        if self.failures():
            lines.append("FAILING: " + "; ".join(self.failures()))
        if self.undecided():
            lines.append("undecided: " + "; ".join(self.undecided()))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        d = self.derivation
        e = html.escape
        out = [f"<p><b>{e(d.name)}</b>: {e(d.title)} (MATH.md {e(d.section)}) on {e(self.model)}, n={self.n}, "
               f"n_samples={self.n_samples}, seed={self.seed}. Nats, the mean over the points, ± Monte-Carlo s.e.</p>",
               "<table><tr><th>#</th><th>line</th><th>value</th><th>exact</th><th>relation to the next line</th>"
               "<th>difference</th><th>holds</th></tr>"]
        for r in self.rows:
            ex = _fmt(r.estimate.exact) + (" " + _mark(r.agrees) if r.agrees is not None else "")
            rel = f"{e(r.relation)} <small>({e(r.why)})</small>" if r.relation else ""
            diff = _fmt(r.difference, r.difference_se) if r.relation else ""
            verdict = {True: "✓", False: "<b style='color:#b00'>✗</b>", None: "?"}[r.holds] if r.relation else ""
            math_ = f"${e(r.latex)}$" if r.latex else e(r.text)
            style = " style='color:#555;font-size:90%'" if r.is_term else ""
            out.append(f"<tr{style}><td>{'' if r.is_term else r.index}</td><td style='text-align:left'>"
                       f"{'&nbsp;&nbsp;· ' if r.is_term else ''}{math_}</td>"
                       f"<td>{e(_fmt(r.estimate.value, r.estimate.se))}</td><td>{e(ex) if r.estimate.units is not None else ''}</td>"
                       f"<td style='text-align:left'>{rel}</td><td>{e(diff)}</td><td>{verdict}</td></tr>")
        out.append("</table>")
        return "".join(out)

    def to_latex(self) -> str:
        """The derivation as a LaTeX ``align*`` of its lines, each with its value ± s.e. and the
        verdict of its relation to the next (terms as comments)."""
        out = [r"\begin{align*}"]
        ln = self.lines
        for j, r in enumerate(ln):
            prefix = "&" if j == 0 else "&" + {"=": "=", "≥": r"\ge", "≤": r"\le"}[ln[j - 1].relation] + " "
            val = _fmt(r.estimate.value, r.estimate.se).replace("±", r"\pm")
            check = ""
            if r.relation:
                check = {True: r"\checkmark", False: r"\times", None: "?"}[r.holds]
                check = r" \quad \text{(" + r.why.replace("_", r"\_").replace("%", r"\%") + r")}\ " + check
            out.append(f"{prefix}{r.latex} && [{val}]{check}" + (r" \\" if j < len(ln) - 1 else ""))
        out.append(r"\end{align*}")
        return "\n".join(out)


def trace(derivation, model, x, n_samples: int = 64, seed: int = 0, q=None) -> TraceResult:
    """Evaluates every line of ``derivation`` (a name in DERIVATIONS or a Derivation) on (model, x)
    with n_samples Monte-Carlo samples per point from ``seed`` and checks every relation (module
    docstring). ``q`` (n, K): the variational distribution of a GaussianMixture (default its
    responsibilities)."""
    d = get(derivation)
    S = check_int("n_samples", n_samples, 2)
    seed = check_int("seed", seed, 0)
    ctx = _context(d, model, x, S, seed, q)
    rows, idx = [], 0
    for st in d.steps:
        got = st.estimate(ctx)
        if st.terms:
            rows.extend(Row(idx, lt, tx, e, is_term=True) for lt, tx, e in got)
        else:
            idx += 1
            rows.append(Row(idx, st.latex, st.text, got, relation=st.relation, why=st.why))
    lines = [r for r in rows if not r.is_term]
    for a, b in zip(lines, lines[1:]):
        if a.relation:
            a.difference, a.difference_se, a.holds = _check(a.estimate, b.estimate, a.relation)
    if lines[-1].relation:
        raise ValueError(f"derivation {d.name!r}: its last line must have no relation, got {lines[-1].relation!r}")
    label = repr(model).split(" with ")[0] if type(model).__repr__ is not object.__repr__ else type(model).__name__
    return TraceResult(d, rows, label, getattr(ctx, "n", 0), S, seed)
