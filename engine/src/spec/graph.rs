//! Phase 5, the graph: cycles found with petgraph's Tarjan SCC and reported as a path, then a
//! topological order by Kahn's algorithm that prefers file order (deterministic).

use std::collections::{BTreeMap, BTreeSet};

use petgraph::graph::{DiGraph, NodeIndex};

use super::check::{err, Checker};
use super::model::ResolvedStage;
use crate::diagnostic::SpecErrorKind;
use crate::span::Span;

/// The stages in topological order, upstream indices renumbered; `None` on a cycle.
pub(super) fn ordered(
    check: &mut Checker<'_>,
    stages: Vec<ResolvedStage>,
    edge_spans: &BTreeMap<(usize, usize), Span>,
) -> Option<Vec<ResolvedStage>> {
    let order = order(check, &stages, edge_spans)?;
    // Renumber upstream indices into the new order.
    let mut position = vec![0; stages.len()];
    for (new, old) in order.iter().enumerate() {
        position[*old] = new;
    }
    let mut slots: Vec<Option<ResolvedStage>> = stages.into_iter().map(Some).collect();
    let mut ordered: Vec<ResolvedStage> = order
        .iter()
        .map(|&i| slots[i].take().expect("each stage is ordered once"))
        .collect();
    for stage in &mut ordered {
        for ups in stage.inputs.values_mut() {
            for u in ups.iter_mut() {
                u.stage = position[u.stage];
            }
        }
    }
    Some(ordered)
}

/// A topological order that prefers file order (deterministic), or a cycle error.
fn order(
    check: &mut Checker<'_>,
    stages: &[ResolvedStage],
    edge_spans: &BTreeMap<(usize, usize), Span>,
) -> Option<Vec<usize>> {
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..stages.len()).map(|i| graph.add_node(i)).collect();
    for &(from, to) in edge_spans.keys() {
        graph.add_edge(nodes[from], nodes[to], ());
    }
    for scc in petgraph::algo::tarjan_scc(&graph) {
        let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let members: BTreeSet<usize> = scc.iter().map(|n| graph[*n]).collect();
        // Walk the cycle from its first member for a readable path.
        let first = *members.iter().next().expect("a cycle has members");
        let mut path = vec![first];
        let mut current = first;
        loop {
            let next = edge_spans
                .keys()
                .filter(|(from, to)| *from == current && members.contains(to))
                .map(|(_, to)| *to)
                .find(|to| !path.contains(to) || *to == first);
            match next {
                Some(n) if n == first => {
                    path.push(n);
                    break;
                }
                Some(n) => {
                    path.push(n);
                    current = n;
                }
                None => break,
            }
        }
        let names: Vec<&str> = path.iter().map(|&i| stages[i].name.as_str()).collect();
        let mut error = err(
            SpecErrorKind::Cycle,
            format!(
                "Stages depend on each other in a cycle: {}",
                names.join(" -> ")
            ),
            edge_spans[&(path[0], path[1.min(path.len() - 1)])],
            &format!(
                "`{}` reads `{}` here",
                names[1.min(names.len() - 1)],
                names[0]
            ),
        );
        for window in path.windows(2).skip(1) {
            if let Some(span) = edge_spans.get(&(window[0], window[1])) {
                error = error.with_label(
                    *span,
                    format!(
                        "`{}` reads `{}` here",
                        stages[window[1]].name, stages[window[0]].name
                    ),
                );
            }
        }
        check.push(
            error.with_help("A stage cannot depend on its own output; remove one of these inputs"),
        );
        return None;
    }
    let mut indegree = vec![0usize; stages.len()];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); stages.len()];
    for &(from, to) in edge_spans.keys() {
        indegree[to] += 1;
        consumers[from].push(to);
    }
    let mut ready: BTreeSet<usize> = (0..stages.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(stages.len());
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for &to in &consumers[next] {
            indegree[to] -= 1;
            if indegree[to] == 0 {
                ready.insert(to);
            }
        }
    }
    Some(order)
}
