"""The report of `benchmarks/methods.py`: tables over seeds, a verdict computed from paired
per-seed differences, and two plots.  Reads only the study's JSON records."""

from __future__ import annotations

import json
import math
import os
import statistics

from methods import METHODS

COLORS = {"clean": "#7f7f7f", "pgd-at": "#1f77b4", "trades": "#2ca02c", "mart": "#9467bd",
          "mma": "#ff7f0e", "dyart": "#d62728"}


def mean_std(values) -> str:
    """Mean ± standard deviation over seeds, three decimals (one value: itself; none: –)."""
    values = list(values)
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _setting(setting: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(setting.items())) or "defaults"


def tune_table(study) -> list[str]:
    p = study.plan
    eps = f"{p['val_eps']:g}"
    chosen = study.chosen(strict=False)
    lines = [f"| method | setting | val clean | val robust ε={eps} | s/epoch | chosen |",
             "|---|---|---|---|---|---|"]
    records = sorted(study.records("tune"), key=lambda r: (METHODS.index(r["method"]),
                                                           -r["robust"][eps]))
    for r in records:
        mark = "**yes**" if r["setting"] == chosen.get(r["method"]) else ""
        lines.append(f"| {r['method']} | {_setting(r['setting'])} | {r['clean']:.3f} | "
                     f"{r['robust'][eps]:.3f} | {r['seconds_per_epoch']:.1f} | {mark} |")
    return lines


def by_method(records, label=lambda r: r["method"]) -> dict:
    """Records grouped by ``label`` (the method, or `Study.labeller`'s), in the order of
    `METHODS` (a method's other labels right after it), each group sorted by seed."""
    out = {}
    for r in records:
        out.setdefault(label(r), []).append(r)
    order = sorted(out, key=lambda k: (METHODS.index(k.split(",")[0]), k))
    return {k: sorted(out[k], key=lambda r: r["seed"]) for k in order}


def _color(label: str) -> str:
    """A method's color; DyART's ablated runs a darker red, its warm-started ones pink."""
    if "warm_start" in label:
        return "#e377c2"
    return COLORS.get(label, "#8c1515" if label.startswith("dyart") else "#000000")


def result_table(groups: dict, eps) -> list[str]:
    head = " | ".join(f"AA ε={e:g}" for e in eps)
    lines = [f"| method | setting | epochs | seeds | clean | {head} | s/epoch | training s |",
             "|---|---|---|---|---|" + "---|" * len(eps) + "---|---|"]
    for method, rs in groups.items():
        cells = [mean_std(r["robust"][f"{e:g}"] for r in rs) for e in eps]
        every = [t for r in rs for t in r["epoch_seconds"]]
        lines.append(
            f"| {method} | {_setting(rs[0]['setting'])} | {rs[0]['epochs']} | {len(rs)} | "
            f"{mean_std(r['clean'] for r in rs)} | " + " | ".join(cells)
            + f" | {statistics.median(r['seconds_per_epoch'] for r in rs):.1f} "
            f"({min(every):.0f}–{max(every):.0f}) | "
            f"{statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    lines += ["", "s/epoch: the median over a run's method epochs (the median over "
                  "seeds), in brackets the range of all its runs' epochs: a wide range "
                  "means the machine was shared for part of the run."]
    return lines + collapsed_note(groups)


#: A run whose clean test accuracy is below this (twice chance on ten classes) has collapsed.
COLLAPSED = 0.2


#: A run whose clean test accuracy is more than this below its method's best seed failed
#: to train, though it did not collapse to chance.
FAILED_GAP = 0.2


def collapsed_note(groups: dict) -> list[str]:
    """Lines naming the runs whose training collapsed (clean accuracy near chance) or
    failed (far below the same method's best seed): they stay in the means above, since
    the protocol fixed each setting before the seeds ran, and a reader must not have to
    guess why a spread is wide."""
    bad, failed = [], []
    for m, rs in groups.items():
        best = max(r["clean"] for r in rs)
        for r in rs:
            if r["clean"] < COLLAPSED:
                bad.append(f"{m} seed {r['seed']} (clean {r['clean']:.3f})")
            elif r["clean"] < best - FAILED_GAP:
                failed.append(f"{m} seed {r['seed']} (clean {r['clean']:.3f} against "
                              f"{best:.3f})")
    if not bad and not failed:
        return []
    out = []
    if bad:
        out.append(f"Collapsed (clean accuracy below {COLLAPSED:g}, chance is 0.1): "
                   + ", ".join(bad) + ".")
    if failed:
        out.append(f"Failed (clean accuracy more than {FAILED_GAP:g} below the method's "
                   f"best seed): " + ", ".join(failed) + ".")
    return ["", "  ".join(out) + "  These runs count in the means and the verdict: the "
                "setting was fixed on seed 0's validation split before any seed ran, and a "
                "method that fails on some seeds at its chosen setting is less robust "
                "to use."]


def paired(a: list[dict], b: list[dict], key) -> tuple[float, float, int]:
    """Mean and standard deviation over seeds of key(a) − key(b), paired by seed."""
    seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
    da = {r["seed"]: key(r) for r in a}
    db = {r["seed"]: key(r) for r in b}
    diffs = [da[s] - db[s] for s in seeds]
    if not diffs:
        return math.nan, math.nan, 0
    return (statistics.mean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else math.nan,
            len(diffs))


def _diff(d: float, s: float, n: int, digits: int = 3) -> str:
    """A paired mean difference with its spread over seeds (none for one seed)."""
    return f"{d:+.{digits}f}" + (f" ± {s:.{digits}f}" if n > 1 else "")


#: Two-sided 95 % quantiles of Student's t by degrees of freedom (paired t-test over seeds).
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def t_sign(d: float, s: float, n: int) -> int:
    """+1 or −1 when a paired mean difference ``d`` (std ``s`` over ``n`` seeds) is
    significant by a two-sided paired t-test at 95 %, else 0."""
    if n < 2 or math.isnan(s):
        return 0
    if s == 0:
        return int(math.copysign(1, d)) if d else 0
    t = abs(d) / (s / math.sqrt(n))
    return int(math.copysign(1, d)) if t > T95.get(n - 1, 1.96) else 0


def verdict(groups: dict, eps: float, label: str, ours: str = "dyart") -> list[str]:
    """Who is best at ``eps`` in one table, and DyART (the group ``ours``) against each
    method, by paired per-seed differences (same seed, same test digits)."""
    key = f"{eps:g}"
    # ranked over the seeds every group has finished, so that a partial study does not
    # set one method's mean over three seeds against another's over one
    seeds = [{r["seed"] for r in rs} for rs in groups.values()]
    common = set.intersection(*seeds)
    means = {m: statistics.mean(r["robust"][key] for r in rs
                                if r["seed"] in common or not common)
             for m, rs in groups.items()}
    order = sorted(means, key=means.get, reverse=True)
    over = ("" if all(s == common for s in seeds) or not common else
            f" over seed{'s' if len(common) > 1 else ''} "
            f"{', '.join(map(str, sorted(common)))} (those every method has finished)")
    lines = [f"**{label}.** Highest mean AutoAttack accuracy at ε={key}{over}: "
             f"**{order[0]}** ({means[order[0]]:.3f}); order: " + " > ".join(order) + "."]
    if ours not in groups:
        return lines
    name = "DyART" + ("" if ours == "dyart" else f" ({ours.split(', ', 1)[1]})")
    rows = []
    for other in order:
        if other == ours:
            continue
        d, s, n = paired(groups[ours], groups[other], lambda r: r["robust"][key])
        dc, sc, _ = paired(groups[ours], groups[other], lambda r: r["clean"])
        robust, clean = t_sign(d, s, n), t_sign(dc, sc, n)
        if n < 2:
            call = "one seed: no spread to judge by"
        else:
            call = {1: "DyART more robust", -1: "DyART less robust",
                    0: "robust accuracy within the seed spread"}[robust] + "; " + {
                1: "DyART more accurate", -1: "DyART less accurate",
                0: "clean accuracy within the seed spread"}[clean]
        rows.append(f"- {name} − {other}: robust {_diff(d, s, n)}, clean {_diff(dc, sc, n)} "
                    f"({n} seed{'s' if n != 1 else ''}; {call})")
    return lines + ["", f"{name} against each method: mean ± standard deviation over seeds of "
                        "the paired difference (same seed, same test digits); a difference "
                        "counts only where a two-sided paired t-test over the seeds rejects "
                        "0 at 95 %:", ""] + rows


def plots(final: dict, equal: dict, images: str, eps: float,
          per_epoch: dict | None = None) -> list[str]:
    """AutoAttack accuracy at ``eps`` against clean accuracy and against training time:
    the timed epoch (``per_epoch``, the `timing` phase) × the run's epochs where measured,
    else the run's own epoch times.  ``final`` and ``equal``: records by `by_method`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"{eps:g}"
    paths = []
    for name, x_of, xlabel in (
            ("methods_aa_vs_clean.png", lambda label, r: r["clean"], "clean accuracy"),
            ("methods_aa_vs_time.png", lambda label, r: (
                per_epoch[label] * r["epochs"] if label in (per_epoch or {})
                else r["train_seconds"]),
             "training time of the method epochs (s, this machine"
             + (", timed side by side)" if per_epoch else ")"))):
        # right: the robust methods' runs that did not collapse, where they crowd together
        fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12.4, 4.6))
        near = []
        for groups, marker, what in ((final, "o", "equal epochs"),
                                     (equal, "^", "equal time")):
            for label, rs in groups.items():
                xy = [(x_of(label, r), r["robust"][key]) for r in rs]
                for a in (ax, zoom):
                    a.scatter(*zip(*xy), c=_color(label), marker=marker, s=36, alpha=0.85,
                              label=f"{label} ({what})")
                if label != "clean":
                    near += [p for p, r in zip(xy, rs) if r["clean"] >= COLLAPSED]
        for a in (ax, zoom):
            a.set_xlabel(xlabel)
            a.set_ylabel(f"AutoAttack accuracy, L∞ ε={key}")
            a.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title("One point per run (seed); MNIST-5k test digits")
        if near:
            xs, ys = zip(*near)
            pad_x, pad_y = max(0.01, 0.08 * (max(xs) - min(xs))), max(0.01, 0.08 * (
                max(ys) - min(ys)))
            zoom.set_xlim(min(xs) - pad_x, max(xs) + pad_x)
            zoom.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
        zoom.set_title("The robust methods' runs, collapsed ones left out (zoom)")
        fig.tight_layout()
        os.makedirs(images, exist_ok=True)
        path = os.path.join(images, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def warm_section(study, final: list[dict], label) -> list[str]:
    """DyART's final runs (cold searches, the paper's) against the same setting with
    each ``warm_start`` of the plan: the table and the paired per-seed differences
    (``label``: the record's group, `Study.labeller`'s)."""
    records = study.records("warm-start")
    cold = [r for r in final if label(r) == "dyart"]
    if not records or not cold:
        return ["Not run yet."]
    eps = study.plan["eps"]
    key = f"{max(eps):g}"
    ks = [k for k in study.plan["warm_starts"]
          if any(r["setting"].get("warm_start") == k for r in records)]
    groups = {"dyart (cold)": cold}
    lines = []
    for k in ks:
        warm = sorted((r for r in records if r["setting"].get("warm_start") == k),
                      key=lambda r: r["seed"])
        groups[f"dyart, warm_start={k}"] = warm
        d, s, n = paired(warm, cold, lambda r: r["robust"][key])
        dc, sc, _ = paired(warm, cold, lambda r: r["clean"])
        dt, st, _ = paired(warm, cold, lambda r: r["seconds_per_epoch"])
        ratio = (statistics.mean(r["seconds_per_epoch"] for r in warm)
                 / statistics.mean(r["seconds_per_epoch"] for r in cold))
        lines.append(f"- `--warm-start {k}` − cold, paired by seed ({n} "
                     f"seed{'s' if n != 1 else ''}): AutoAttack at ε={key} "
                     f"{_diff(d, s, n)}, clean {_diff(dc, sc, n)}, seconds per epoch "
                     f"{_diff(dt, st, n, 1)} (warm / cold epoch time {ratio:.2f}).")
    listed = " and ".join(f"`--warm-start {k}`" for k in ks)
    return [f"The same DyART setting with {listed} (after its first visit, each point is "
            "searched in that many FAB iterations from its last boundary point), the same "
            "seeds, epochs and AutoAttack:", "",
            *result_table(groups, eps), "", *lines]


def last_epoch_logs(study, record: dict) -> dict:
    """The last method epoch's training logs of a run (its history, kept beside the
    attack's points), or {} for runs recorded before the history was kept."""
    path = study.train_info_path(record["phase"], record["name"])
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        history = json.load(f).get("history") or [{}]
    return history[-1]


def _logs(study, record: dict) -> str:
    logs = last_epoch_logs(study, record)
    return " | ".join(f"{logs[k]:.3f}" if isinstance(logs.get(k), float) else "–"
                      for k in ("boundary_fraction", "mean_margin")) + " |"


def ablation_section(study) -> list[str]:
    """DyART's chosen setting against each one-change variant on the validation split."""
    records = study.records("ablation")
    base = study.chosen_dyart_record()
    if not records or base is None:
        return ["Not run yet."]
    chosen = base["setting"]
    eps = f"{study.plan['val_eps']:g}"
    lines = ["DyART's chosen setting with one change at a time (`ABLATIONS` in the script), "
             "seed 0, trained and attacked as in tuning (validation split, "
             f"{study.plan['val_text']} at L∞ {eps}).  One seed each; the chosen setting "
             f"was the best of its {len(study.plan['grids']['dyart'])} on this very split, "
             "so its number is, if anything, flattered by the choice.", "",
             f"| change | val clean | val robust ε={eps} | Δ robust | s/epoch | "
             "boundary fraction | mean margin |",
             "|---|---|---|---|---|---|---|",
             f"| none ({_setting(chosen)}) | {base['clean']:.3f} | "
             f"{base['robust'][eps]:.3f} | – | {base['seconds_per_epoch']:.1f} | "
             + _logs(study, base)]

    def change(r):
        return {k: v for k, v in r["setting"].items() if chosen.get(k) != v}

    ranked = sorted(records, key=lambda r: (-r["robust"][eps], -r["clean"]))
    for r in ranked:
        lines.append(f"| {_setting(change(r))} | {r['clean']:.3f} | {r['robust'][eps]:.3f} | "
                     f"{r['robust'][eps] - base['robust'][eps]:+.3f} | "
                     f"{r['seconds_per_epoch']:.1f} | " + _logs(study, r))
    best = ranked[0]
    gain = best["robust"][eps] - base["robust"][eps]
    lines += ["", (f"Best change: {_setting(change(best))}, {gain:+.3f} robust accuracy over "
                   "the chosen setting on one seed: a candidate for DyART's default, run "
                   "over the seeds in the final phase (its own row and verdict above)."
                   if gain > 0 else
                   "No change beats the chosen setting on the validation split; DyART's "
                   "setting stays.")
              + f"  ({len(records)} of {len(study.plan['ablations'])} variants run.)",
              "", "Boundary fraction and mean margin: DyART's training logs over the last "
              "epoch: the share of the batch with a boundary point kept by the search and "
              "its filter (the rest get the clean loss only), and their mean margin (L∞); "
              "– for runs recorded before the logs were kept."]
    return lines


def timing_table(study) -> list[str]:
    """The ``timing`` phase's epoch times against DyART's and the epochs they give."""
    timed = study.timed()
    if not timed:
        return ["Epoch times not measured yet (the `timing` phase)."]
    per_epoch, epochs = timed["seconds_per_epoch"], study.equal_time_epochs()
    lines = [f"Epoch times measured side by side (the `timing` phase: every method in turn, "
             f"{timed['rounds']} rounds of {timed['epochs']}-epoch runs on the "
             f"{timed['train_points']} training digits, the compiling first epoch left out; "
             f"commit {timed['commit']}):", "",
             "| method | s/epoch | × DyART | epochs in DyART's training time |",
             "|---|---|---|---|"]
    for name, t in per_epoch.items():
        lines.append(f"| {name} | {t:.1f} | {t / per_epoch['dyart']:.2f} | "
                     f"{epochs.get(name, '–')} |")
    return lines


def write_report(study, path: str, images: str, command: str) -> list[str]:
    """Write the Markdown report to ``path`` and, once there are final runs, the two plots
    into ``images``; returns the paths.  Phases not run yet are reported as such."""
    p = study.plan
    tune, final, equal = (study.records("tune"), study.records("final"),
                          study.records("equal-time"))
    warm_runs = study.records("warm-start")
    epochs = study.equal_time_epochs()
    label, ablated = study.labeller()
    # DyART's winning ablation at matched cost: its own final runs where its timed epoch
    # fits the same number of epochs into DyART's training time
    per_epoch = study.timed().get("seconds_per_epoch", {})
    if epochs and ablated in per_epoch:
        epochs[ablated] = int(round(per_epoch["dyart"] * p["epochs"] / per_epoch[ablated]))
    final_groups = by_method(final, label)
    # the equal-time table: DyART's own runs plus the other methods' longer/shorter ones
    # (and warm-started DyART's: the warm-start phase's runs where its epochs fit as they are)
    warm = {k: study.warm_label(k) for k in p.get("equal_time_warm", ())}
    equal_groups = by_method([r for r in final + warm_runs
                              if epochs.get(label(r)) == p["epochs"]] + equal, label)
    commits = sorted({r["commit"] for r in tune + final + equal + warm_runs
                      + study.records("ablation")})
    eps = p["eps"]
    # final: every method over the seeds, and DyART's winning ablation setting (if any)
    planned = (len(p["methods"]) + (ablated is not None)) * len(p["seeds"])
    tuned = sum(len(p["grids"][m]) for m in p["methods"])
    status = (f"Runs recorded: tune {len(tune)} of {tuned}, ablation "
              f"{len(study.records('ablation'))} of {len(p['ablations'])}, final "
              f"{len(final)} of {planned}, warm start "
              f"{len(study.records('warm-start'))} of "
              f"{len(p['warm_starts']) * len(p['seeds'])}, equal time {len(equal)}.")
    lines = [
        "<!-- --8<-- [start:results] -->",
        "# Which method? The tuned comparison on MNIST-5k",
        "",
        f"`KERAS_BACKEND=tensorflow {command}` (records from commits "
        f"{', '.join(commits) or '–'}; {os.cpu_count()} CPU cores).  {status}",
        "",
        f"small_cnn, `keras-dyart train`'s recipe: {p['burn_in']} clean epochs, then "
        f"{p['epochs']} method epochs (batch {p['batch_size']}, SGD with Nesterov momentum, "
        "constant rate, weight decay 5e-4, gradient clipping, weight average τ 0.995; the "
        "averaged model is evaluated).  Settings are chosen on a validation split (the last "
        f"{p['holdout']} of the first {p['limit']} training digits, attacked by "
        f"{p['val_text']} at L∞ {p['val_eps']:g}); the "
        "test digits are used only "
        f"by the final runs: standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on the "
        f"first {p['test_n']} test digits, seeds {', '.join(map(str, p['seeds']))}.  "
        "Mean ± standard deviation over seeds.",
        "",
        "## Equal epochs",
        "",
        *(result_table(final_groups, eps) if final else ["Not run yet."]),
        "",
        "## Equal training time",
        "",
    ]
    lines += [*timing_table(study), ""]
    if equal:
        lines += ["Each method trains for the epochs its timed epoch fits into DyART's "
                  "training time: " + ", ".join(f"{m} {e}" for m, e in epochs.items())
                  + ".  AutoAttack at "
                  + ", ".join(f"ε={e:g}" for e in p["equal_time_eps"]) + " only.",
                  "", *result_table(equal_groups, p["equal_time_eps"])]
    else:
        lines += ["Equal-time runs: not run yet."]
    lines += ["", "## Verdict (computed from the records)", ""]
    if final_groups.get("dyart") and len(final_groups) > 1:
        lines += verdict({k: v for k, v in final_groups.items() if k != ablated},
                         max(eps), "Equal epochs")
        if ablated in final_groups:
            lines += ["", *verdict({k: v for k, v in final_groups.items() if k != "dyart"},
                                   max(eps), f"Equal epochs, DyART after its ablations "
                                   f"({len(p['grids']['dyart'])} tuning settings and "
                                   f"{len(p['ablations'])} ablations, where each other "
                                   "method had its tuning settings alone)", ours=ablated)]
        if equal:
            lines += ["", *verdict({k: v for k, v in equal_groups.items()
                                    if k != ablated and k not in warm.values()},
                                   max(eps), "Equal training time")]
            if ablated in equal_groups:
                lines += ["", *verdict({k: v for k, v in equal_groups.items()
                                        if k != "dyart" and k not in warm.values()},
                                       max(eps), "Equal training time, DyART after its "
                                       "ablations", ours=ablated)]
            for k, name in warm.items():
                if name in equal_groups:
                    lines += ["", *verdict(equal_groups, max(eps), "Equal training time, "
                                           f"DyART with `--warm-start {k}`", ours=name)]
    else:
        lines += ["Not before the final runs."]
    # docs/study.md includes the report in two sections with the plots between them
    lines += ["", "<!-- --8<-- [end:results] -->", "<!-- --8<-- [start:details] -->",
              "", "## DyART with warm-started searches", "", *warm_section(study, final, label)]
    lines += ["", "## DyART ablations (validation split, seed 0)", "",
              *ablation_section(study)]
    lines += ["", "## Tuning (validation split, seed 0)", "",
              "Seconds per epoch here are rough: tuning runs shared the machine with other "
              "work; the cost comparison above uses the `timing` phase's epochs.", ""]
    lines += tune_table(study) if tune else ["Not run yet."]
    lines += [
        "",
        "Settings are `keras-dyart train` options over its defaults (lr 0.05, clipnorm 1.0; "
        "DyART λ 1000, r0 0.6, with α given in every DyART setting; TRADES/MART β "
        "(kl_beta) 6; MMA d_max 0.4).",
        "<!-- --8<-- [end:details] -->",
        "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return [path] + (plots(final_groups, by_method(equal, label), images, max(eps),
                           study.timed().get("seconds_per_epoch")) if final else [])


__all__ = ["write_report"]
