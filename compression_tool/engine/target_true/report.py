"""The schedule report the CLI prints (the same numbers are stored as JSON next to the YAML)."""
from __future__ import annotations

from compression_tool.engine.target_true.config import TargetTrueResult


def format_result(r: TargetTrueResult) -> str:
    """The schedule report printed by the CLI (and stored as JSON next to the YAML)."""
    goal = f"at most {r.threshold:g} points below the unpruned model" if r.mode == "drop" else f">= {r.threshold:g}"
    lines = [f"target-true schedule: {r.metric} {goal}; decided on the check split ({r.check_n} samples), "
             f"judged on the report split ({r.report_n} samples)"]
    if not r.resolvable:
        lines.append("  the target is finer than the check split can resolve: nothing pruned")
    lines.append(f"  {'layer (added in this order)':<32} {'level':>6} {'alone (SA)':>11} {'composed: check':>16} "
                 f"{'report':>7}")
    for row in r.per_layer:
        c, rep = row.get("composed_check"), row.get("composed_report")
        lines.append(f"  {row['layer']:<32} {row['sparsity']:>6g} {row['predicted_alone']:>11.2f} "
                     f"{'' if c is None else f'{c:.2f}':>16} {'' if rep is None else f'{rep:.2f}':>7}")
    if r.per_layer:
        way = "AdaBN" if r.bn_method == "adabn" else "paired correction"
        adabn = f"re-estimated ({way})" if r.adabn else f"kept (re-estimating them, {way}, was not better on check)"
        lines.append(f"  BN statistics: {adabn}")
    bound = "upper bound of the drop" if r.mode == "drop" else "lower bound"
    lines.append(f"  composed on check : {r.check:.2f} (unpruned {r.check_baseline:.2f}; {bound} {r.check_bound:.2f} "
                 f"at {100 * r.level:.4g} %)")
    if r.search_pick is not None and r.guards and r.confirm is None:
        lines.append(f"  the search's own pick ({bound} {r.search_pick['bound']:.2f} at its per-candidate level) does "
                     f"not hold at {100 * r.level:.4g} %, the level that accounts for its {r.evals} candidates; "
                     + ("kept the most pruned of the nested schedules along its moves that does" if r.per_layer
                        else "none of the nested schedules along its moves does: nothing pruned"))
    if r.adjusted is not None:
        a = r.adjusted
        lines.append(f"  selection-adjusted: {bound} {a['bound']:.2f} at {100 * a['level']:.4g} % (simultaneous over "
                     f"the {r.evals} candidates measured): " + ("holds" if a["passed"] else
                                                               "does NOT hold: it may miss on new data (winner's "
                                                               "curse; --multiple_testing simultaneous / --confirm "
                                                               "guard it)"))
    if r.confirm is not None:
        c = r.confirm
        lines.append(f"  confirm split ({c['n']} samples, unpruned {c['unpruned']:.2f}): {c['tries']} of the search's "
                     f"{c['chain']} accepted schedules tested, least pruned first")
        for row in c["tested"]:
            lines.append(f"    {100 * row['reduction']:5.1f}% {r.resource} removed: {row['value']:.2f} ({bound} "
                         f"{row['bound']:.2f}) {'holds' if row['passed'] else 'fails: stop'}")
        if not c["passed"]:
            lines.append("    nothing held: nothing pruned" if c["tries"] else "    nothing to confirm")
    if r.report is not None:
        lines.append(f"  composed on report: {r.report:.2f} (unpruned {r.report_baseline:.2f}; {bound} "
                     f"{r.report_bound:.2f}) -> promise kept within 0.5 pt: {'yes' if r.promised() else 'NO'}")
    lines.append(f"  MACs {r.base_macs / 1e6:.3f}M -> {r.macs / 1e6:.3f}M ({100 * (1 - r.macs / r.base_macs):.1f}% "
                 f"removed), params {r.base_params / 1e3:.1f}k -> {r.params / 1e3:.1f}k "
                 f"({100 * (1 - r.params / r.base_params):.1f}% removed); {r.evals} composed models in "
                 f"{r.seconds:.1f} s")
    if r.latency is not None and r.base_latency:
        lines.append(f"  latency (predicted from the per-layer tables) {r.base_latency:.3f} ms -> {r.latency:.3f} ms "
                     f"({100 * (1 - r.latency / r.base_latency):.1f}% removed)")
    return "\n".join(lines)
