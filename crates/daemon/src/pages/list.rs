//! The runs list (`/`, filterable by repository and state) and the recipe board (`/board`).

use cc_ci_harness::contract::short_sha;
use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::StatusCode;

use super::{Body, badge, enc, esc, html, layout, query_param, run_label, span, store_error, time};
use crate::render::recipe_of;
use crate::state::State;
use crate::store::{RunRow, now};

/// How many of the newest runs the list and the board look at.
const HISTORY: usize = 1000;
/// How many rows the list shows after filtering.
const SHOWN: usize = 200;

const STATES: [&str; 7] = [
    "queued",
    "running",
    "done",
    "pass",
    "fail",
    "error",
    "cancelled",
];

fn matches_state(run: &RunRow, state: &str) -> bool {
    state.is_empty()
        || run.state.as_str() == state
        || run.verdict.is_some_and(|v| v.as_str() == state)
}

fn age(run: &RunRow) -> String {
    let at = run.finished_at.or(run.started_at).unwrap_or(run.created_at);
    format!("{} ago", span(now() - at))
}

fn duration(run: &RunRow) -> String {
    match (run.started_at, run.finished_at) {
        (Some(s), Some(f)) => span(f - s),
        (Some(s), None) => format!("{} so far", span(now() - s)),
        _ => "–".into(),
    }
}

pub(super) fn runs_page(shared: &Arc<State>, query: &str) -> hyper::Response<Body> {
    let runs = match shared.store.list_runs(HISTORY) {
        Ok(r) => r,
        Err(e) => return store_error(&e),
    };
    let repo = query_param(query, "repo").unwrap_or_default();
    let state = query_param(query, "state").unwrap_or_default();
    let mut repos: Vec<&str> = runs.iter().map(|r| r.repo.as_str()).collect();
    repos.sort_unstable();
    repos.dedup();

    let mut form = String::from(
        "<form class=\"filters\" method=\"get\" action=\"/\"><label>repository <select name=\"repo\"><option value=\"\">all</option>",
    );
    for r in &repos {
        form.push_str(&format!(
            "<option value=\"{}\"{}>{}</option>",
            esc(r),
            if *r == repo { " selected" } else { "" },
            esc(r)
        ));
    }
    form.push_str(
        "</select></label> <label>state <select name=\"state\"><option value=\"\">all</option>",
    );
    for s in STATES {
        form.push_str(&format!(
            "<option{}>{s}</option>",
            if s == state { " selected" } else { "" }
        ));
    }
    form.push_str("</select></label> <button type=\"submit\">Filter</button></form>");

    let shown: Vec<&RunRow> = runs
        .iter()
        .filter(|r| repo.is_empty() || r.repo == repo)
        .filter(|r| matches_state(r, &state))
        .take(SHOWN)
        .collect();
    let (running, queued) = shared.store.counts().unwrap_or((0, 0));
    let mut body = format!(
        "<h1>Runs</h1><p class=\"hint\">{running} running, {queued} queued. \
         The same list as JSON: <a href=\"/runs\">/runs</a>.</p>{form}"
    );
    if shown.is_empty() {
        body.push_str("<p id=\"no-runs\">No runs match.</p>");
    } else {
        body.push_str(
            "<table id=\"runs\" class=\"list\"><thead><tr><th>run</th><th>state</th><th>repository</th>\
             <th>pull request</th><th>commit</th><th>by</th><th>queued</th><th>duration</th><th>age</th></tr></thead><tbody>",
        );
        for r in shown {
            body.push_str(&format!(
                "<tr data-run=\"{id}\" data-repo=\"{repo}\" data-state=\"{label}\"><td><a href=\"/runs/{id}\">#{id}</a></td>\
                 <td>{badge}</td><td><a href=\"/?repo={qrepo}\">{repo}</a></td><td>#{pr}</td>\
                 <td><code>{sha}</code></td><td>{user}</td><td>{created}</td><td>{dur}</td><td>{age}</td></tr>",
                id = r.id,
                label = run_label(r),
                badge = badge(run_label(r)),
                qrepo = esc(&enc(&r.repo)),
                repo = esc(&r.repo),
                pr = r.pr,
                sha = esc(short_sha(&r.head_sha)),
                user = esc(&r.user),
                created = time(r.created_at),
                dur = duration(r),
                age = age(r),
            ));
        }
        body.push_str("</tbody></table>");
    }
    html(StatusCode::OK, layout("runs", &body, None))
}

/// The latest run of every pull request, grouped by recipe.
pub(super) fn board_page(shared: &Arc<State>) -> hyper::Response<Body> {
    let runs = match shared.store.list_runs(HISTORY) {
        Ok(r) => r,
        Err(e) => return store_error(&e),
    };
    // Newest first: the first run seen for a pull request is its latest.
    let mut latest: BTreeMap<(&str, i64), &RunRow> = BTreeMap::new();
    for r in &runs {
        latest.entry((r.repo.as_str(), r.pr)).or_insert(r);
    }
    // A pull request whose head moved on since its latest run shows an out-of-date result.
    let heads: BTreeMap<(String, i64), String> = shared
        .store
        .pr_heads()
        .map(|h| h.into_iter().map(|(r, p, s)| ((r, p), s)).collect())
        .unwrap_or_default();
    let mut body = String::from(
        "<h1>Recipe board</h1><p class=\"hint\">The latest run of every pull request, by recipe.</p>",
    );
    if latest.is_empty() {
        body.push_str("<p>No runs yet.</p>");
    } else {
        body.push_str(
            "<table id=\"board\" class=\"list\"><thead><tr><th>recipe</th><th>pull request</th><th>latest</th>\
             <th>run</th><th>commit</th><th>head</th><th>age</th></tr></thead><tbody>",
        );
        for ((repo, pr), r) in latest {
            body.push_str(&format!(
                "<tr data-recipe=\"{recipe}\" data-pr=\"{pr}\"><td><a href=\"/?repo={qrepo}\">{recipe}</a></td>\
                 <td><a href=\"{forge}/{repo}/pulls/{pr}\">{repo} #{pr}</a></td><td>{badge}</td><td><a href=\"/runs/{id}\">#{id}</a></td>\
                 <td><code>{sha}</code></td><td class=\"head\">{head}</td><td>{age}</td></tr>",
                head = match heads.get(&(repo.to_ascii_lowercase(), pr)) {
                    Some(h) if *h != r.head_sha => format!(
                        "stale: now <code>{}</code>",
                        esc(short_sha(h))
                    ),
                    Some(_) => "current".into(),
                    None => "–".into(),
                },
                recipe = esc(recipe_of(repo)),
                forge = esc(shared.settings.config.forge.url.trim_end_matches('/')),
                qrepo = esc(&enc(repo)),
                repo = esc(repo),
                badge = badge(run_label(r)),
                id = r.id,
                sha = esc(short_sha(&r.head_sha)),
                age = age(r),
            ));
        }
        body.push_str("</tbody></table>");
    }
    html(StatusCode::OK, layout("board", &body, None))
}
