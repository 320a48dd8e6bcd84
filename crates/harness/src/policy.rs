//! The compose policy: what a recipe's compose files may ask of the CI host, decided before
//! anything is deployed. Default deny: a pull request's author controls the recipe, and a
//! container that can reach the host owns the CI server.
//!
//! Each refusal names a *rule*; an operator can allow named rules for named repositories
//! (`harness.compose_allow`, e.g. the traefik recipe needs `docker-socket`). Swarm ignores some
//! keys (`privileged`, `cap_add` on older engines, `devices`), but they are refused anyway: they
//! state an intent no recipe under test should have.
//!
//! Pure: files referenced by the compose file (`configs`/`secrets` `file:`, `env_file`) are
//! judged through a checker the caller passes in (see [`crate::safefs::check_inside`]).

use std::collections::BTreeSet;

use serde_norway::Value;

/// Every rule the policy enforces, with what it protects against. Names are what operators
/// list in `harness.compose_allow`.
pub const RULES: &[(&str, &str)] = &[
    ("bind-mount", "a mount of a host path into a container"),
    (
        "docker-socket",
        "the Docker socket mounted into a container",
    ),
    ("privileged", "a privileged container"),
    ("cap_add", "extra Linux capabilities"),
    ("devices", "host devices or GPUs in a container"),
    (
        "host-namespace",
        "the host's network, pid, ipc, uts, user or cgroup namespace",
    ),
    (
        "security_opt",
        "AppArmor, seccomp or SELinux confinement turned off",
    ),
    (
        "cgroup_parent",
        "a container placed in a host cgroup of the recipe's choosing",
    ),
    ("volumes_from", "volumes of another container"),
    (
        "file-outside",
        "a file read from outside the checkout or through a symlink",
    ),
    (
        "host-environment",
        "a secret or config taken from cc-ci's own environment",
    ),
    (
        "foreign-object",
        "a volume, secret or config that belongs to another stack",
    ),
];

/// Names of the Docker socket (and the directories that hold it).
const SOCKET_PATHS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];

/// One refusal: the file, the service (or top-level section), the key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub file: String,
    /// `service app`, or `volumes data` / `secrets x` / `configs y` for top-level objects.
    pub place: String,
    pub key: String,
    pub rule: &'static str,
    pub problem: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: key `{}`: {} (policy rule `{}`; an operator may allow it for this repository with harness.compose_allow)",
            self.file, self.place, self.key, self.problem, self.rule
        )
    }
}

/// What the policy found in one compose file: refusals, and uses of allowed rules (for notes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub refused: Vec<Violation>,
    pub allowed: Vec<Violation>,
}

/// Checks one compose file. `allowed` are the rule names the operator allows for this
/// repository; `file_check` judges a path (relative to the checkout, as written) that the
/// compose file makes Docker read: `Err(why)` when it is outside the checkout, a symlink or not
/// a regular file.
pub fn check_compose(
    file: &str,
    doc: &Value,
    allowed: &BTreeSet<String>,
    file_check: &dyn Fn(&str) -> Result<(), String>,
) -> Verdict {
    let mut found = Vec::new();
    let mut push = |place: String, key: String, rule: &'static str, problem: String| {
        found.push(Violation {
            file: file.to_string(),
            place,
            key,
            rule,
            problem,
        })
    };
    let top = doc.as_mapping();
    let get = |k: &str| top.and_then(|m| m.get(k));
    if let Some(Value::Mapping(services)) = get("services") {
        check_services(services, &mut push, file_check);
    }
    // Top-level objects: named volumes that are really host paths, and objects of other stacks.
    if let Some(Value::Mapping(vols)) = get("volumes") {
        check_volumes(vols, &mut push);
    }
    // The predefined `host` network, joined as an external network, is the host's network
    // namespace by another name.
    if let Some(Value::Mapping(nets)) = get("networks") {
        check_networks(nets, &mut push);
    }
    for section in ["secrets", "configs"] {
        if let Some(Value::Mapping(objs)) = get(section) {
            check_objects(section, objs, &mut push, file_check);
        }
    }

    let (allowed_uses, refused) = found
        .into_iter()
        .partition(|v: &Violation| allowed.contains(v.rule));
    Verdict {
        refused,
        allowed: allowed_uses,
    }
}

type Push<'a> = dyn FnMut(String, String, &'static str, String) + 'a;

fn check_services(
    services: &serde_norway::Mapping,
    push: &mut Push,
    file_check: &dyn Fn(&str) -> Result<(), String>,
) {
    for (name, svc) in services {
        let name = scalar(name);
        let place = format!("service `{name}`");
        let Some(svc) = svc.as_mapping() else {
            continue;
        };
        for (k, v) in svc {
            let key = scalar(k);
            check_service_key(
                &key,
                v,
                &mut |key, rule, problem| push(place.clone(), key, rule, problem),
                file_check,
            );
        }
    }
}

fn check_volumes(vols: &serde_norway::Mapping, push: &mut Push) {
    for (name, v) in vols {
        let name = scalar(name);
        let place = format!("volumes `{name}`");
        let Some(v) = v.as_mapping() else { continue };
        if let Some(Value::Mapping(opts)) = v.get("driver_opts") {
            let opt = |k: &str| opts.get(k).map(scalar).unwrap_or_default();
            let device = opt("device");
            let o = opt("o");
            let binds = o
                .split(',')
                .any(|t| t.trim() == "bind" || t.trim() == "rbind");
            if SOCKET_PATHS.iter().any(|s| device.contains(s)) {
                push(
                    place.clone(),
                    "driver_opts.device".into(),
                    "docker-socket",
                    format!("the volume is the Docker socket `{device}`"),
                );
            } else if binds || device.starts_with('/') || device.contains('$') {
                push(
                    place.clone(),
                    "driver_opts".into(),
                    "bind-mount",
                    format!("the volume binds the host path `{device}` (o: `{o}`) into containers"),
                );
            }
        }
        foreign(&place, v, false, push);
    }
}

fn check_networks(nets: &serde_norway::Mapping, push: &mut Push) {
    for (name, v) in nets {
        let key_name = scalar(name);
        let Some(v) = v.as_mapping() else { continue };
        let real = v
            .get("name")
            .map(scalar)
            .unwrap_or_else(|| key_name.clone());
        let driver = v.get("driver").map(scalar).unwrap_or_default();
        let external = v.get("external").is_some_and(truthy);
        if driver == "host"
            || driver.contains('$')
            || (external && (real == "host" || real.contains('$')))
        {
            push(
                format!("networks `{key_name}`"),
                if driver.is_empty() {
                    "external".into()
                } else {
                    "driver".into()
                },
                "host-namespace",
                "joins the host's network".into(),
            );
        }
    }
}

fn check_objects(
    section: &str,
    objs: &serde_norway::Mapping,
    push: &mut Push,
    file_check: &dyn Fn(&str) -> Result<(), String>,
) {
    for (name, v) in objs {
        let place = format!("{section} `{}`", scalar(name));
        let Some(v) = v.as_mapping() else { continue };
        if let Some(f) = v.get("file") {
            let f = scalar(f);
            if let Err(why) = file_ref(&f, file_check) {
                push(place.clone(), "file".into(), "file-outside", why);
            }
        }
        if v.contains_key("environment") {
            push(
                place.clone(),
                "environment".into(),
                "host-environment",
                "takes its value from the environment cc-ci runs in".into(),
            );
        }
        foreign(&place, v, true, push);
    }
}

/// A top-level object that names something outside this stack: `name:` not starting with the
/// stack's name, or `external` without one (its real name is then the key itself).
fn foreign(
    place: &str,
    v: &serde_norway::Mapping,
    external_ok_with_stack_name: bool,
    push: &mut Push,
) {
    let external = v.get("external").is_some_and(truthy);
    match v.get("name").map(scalar) {
        Some(n) if !is_stack_scoped(&n) => push(
            place.to_string(),
            "name".into(),
            "foreign-object",
            format!("`{n}` is not a name of this stack (it must start with `${{STACK_NAME}}_`)"),
        ),
        // An external volume of this stack cannot exist before its first deploy.
        Some(_) if external && !external_ok_with_stack_name => push(
            place.to_string(),
            "external".into(),
            "foreign-object",
            "an external volume is not created by this deployment".into(),
        ),
        Some(_) => {}
        None if external => push(
            place.to_string(),
            "external".into(),
            "foreign-object",
            "an external object without a `${STACK_NAME}_` name belongs to someone else".into(),
        ),
        None => {}
    }
}

fn is_stack_scoped(name: &str) -> bool {
    ["${STACK_NAME}_", "$STACK_NAME", "${STACK_NAME}"]
        .iter()
        .any(|p| name.starts_with(p))
        && !name.contains("..")
}

fn check_service_key(
    key: &str,
    v: &Value,
    push: &mut dyn FnMut(String, &'static str, String),
    file_check: &dyn Fn(&str) -> Result<(), String>,
) {
    match key {
        "privileged" if truthy(v) => push(
            key.into(),
            "privileged",
            "asks for a privileged container".into(),
        ),
        "cap_add" if non_empty(v) => push(
            key.into(),
            "cap_add",
            format!("adds capabilities {}", list_text(v)),
        ),
        "devices" | "device_cgroup_rules" | "gpus" if non_empty(v) => push(
            key.into(),
            "devices",
            format!("gives the container host devices {}", list_text(v)),
        ),
        "network_mode" | "pid" | "ipc" | "userns_mode" | "uts" | "cgroup" => {
            let s = scalar(v);
            // `service:x` and `container:x` join another container's namespace: refused too,
            // since the other container need not belong to this stack.
            if s == "host"
                || s.contains('$')
                || s.starts_with("container:")
                || s.starts_with("service:")
            {
                push(
                    key.into(),
                    "host-namespace",
                    format!("`{key}: {s}` shares a namespace outside the container"),
                );
            }
        }
        "security_opt" => {
            for (i, o) in seq(v).iter().enumerate() {
                let o = scalar(o);
                let lower = o.to_ascii_lowercase().replace('=', ":");
                if lower.contains("unconfined")
                    || lower.contains("label:disable")
                    || lower.contains('$')
                {
                    push(
                        format!("{key}[{i}]"),
                        "security_opt",
                        format!("`{o}` turns confinement off"),
                    );
                }
            }
        }
        "cgroup_parent" => push(
            key.into(),
            "cgroup_parent",
            format!("places the container in the host cgroup `{}`", scalar(v)),
        ),
        "volumes_from" if non_empty(v) => push(
            key.into(),
            "volumes_from",
            format!("mounts the volumes of {}", list_text(v)),
        ),
        "volumes" => {
            for (i, m) in seq(v).iter().enumerate() {
                check_mount(&format!("{key}[{i}]"), m, push);
            }
        }
        "env_file" => {
            let files: Vec<String> = match v {
                Value::Sequence(s) => s
                    .iter()
                    .map(|e| match e {
                        Value::Mapping(m) => m.get("path").map(scalar).unwrap_or_default(),
                        other => scalar(other),
                    })
                    .collect(),
                other => vec![scalar(other)],
            };
            for f in files {
                if let Err(why) = file_ref(&f, file_check) {
                    push(key.into(), "file-outside", why);
                }
            }
        }
        "extends" => {
            if let Some(f) = v.as_mapping().and_then(|m| m.get("file"))
                && let Err(why) = file_ref(&scalar(f), file_check)
            {
                push("extends.file".into(), "file-outside", why);
            }
        }
        _ => {}
    }
}

/// One entry of a service's `volumes`: short `src:dst[:mode]` or the long mapping syntax.
fn check_mount(key: &str, m: &Value, push: &mut dyn FnMut(String, &'static str, String)) {
    let (kind, source) = match m {
        Value::Mapping(map) => {
            let kind = map
                .get("type")
                .map(scalar)
                .unwrap_or_else(|| "volume".into());
            let source = map.get("source").map(scalar).unwrap_or_default();
            if map.contains_key("bind") && kind != "bind" {
                // Bind options on a non-bind mount are at best a mistake; treat as a bind.
                return push(
                    format!("{key}.bind"),
                    "bind-mount",
                    format!("bind options on a `{kind}` mount of `{source}`"),
                );
            }
            (kind, source)
        }
        other => {
            let s = scalar(other);
            let parts: Vec<&str> = s.split(':').collect();
            if parts.len() < 2 {
                // `/data` alone is an anonymous volume.
                return;
            }
            let source = parts[0].to_string();
            let kind = if is_plain_volume_name(&source) {
                "volume"
            } else {
                "bind"
            };
            (kind.to_string(), source)
        }
    };
    if SOCKET_PATHS
        .iter()
        .any(|p| source.trim_end_matches('/') == *p)
    {
        return push(
            key.into(),
            "docker-socket",
            format!("mounts the Docker socket `{source}`"),
        );
    }
    match kind.as_str() {
        "volume" | "tmpfs" | "image" => {
            if source.contains('$') && kind == "volume" && !is_plain_volume_name(&source) {
                push(
                    key.into(),
                    "bind-mount",
                    format!("the source `{source}` is interpolated: it could be a host path"),
                );
            }
        }
        _ => push(
            key.into(),
            "bind-mount",
            format!("mounts the host path `{source}` ({kind})"),
        ),
    }
}

/// A named volume reference: what is not a path. Interpolation is refused, since the value
/// comes from the recipe's own env file and could be a path.
fn is_plain_volume_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// A file the compose file makes Docker read on the CI host.
fn file_ref(path: &str, file_check: &dyn Fn(&str) -> Result<(), String>) -> Result<(), String> {
    if path.contains('$') {
        return Err(format!(
            "the path `{path}` is interpolated: cannot tell that it stays inside the checkout"
        ));
    }
    file_check(path).map_err(|why| format!("`{path}`: {why}"))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn seq(v: &Value) -> Vec<Value> {
    match v {
        Value::Sequence(s) => s.clone(),
        Value::Null => vec![],
        other => vec![other.clone()],
    }
}

/// Anything but an explicit false (or nothing) counts: `${PRIV}` could expand to `true`.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::String(s) => !matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "false" | "no" | "0" | ""
        ),
        _ => true,
    }
}

fn non_empty(v: &Value) -> bool {
    match v {
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

fn list_text(v: &Value) -> String {
    let items: Vec<String> = seq(v).iter().map(scalar).collect();
    format!("[{}]", items.join(", "))
}

/// Is `name` a rule of the policy?
pub fn is_rule(name: &str) -> bool {
    RULES.iter().any(|(r, _)| *r == name)
}

/// `owner/name` of a recipe source: the last two path segments of a URL or directory, without
/// `.git`. The daemon always passes `<forge>/<owner>/<name>.git`.
pub fn repository_of(source: &str) -> Option<String> {
    let s = source.trim_end_matches('/');
    let s = s.strip_suffix(".git").unwrap_or(s);
    // `git@host:owner/name`
    let s = s.rsplit_once(':').map(|(_, r)| r).unwrap_or(s);
    let mut parts = s.rsplit('/').filter(|p| !p.is_empty());
    let name = parts.next()?;
    let owner = parts.next()?;
    Some(format!("{owner}/{name}").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(yaml: &str) -> Verdict {
        judge_allowing(yaml, &[])
    }

    fn judge_allowing(yaml: &str, allow: &[&str]) -> Verdict {
        let doc: Value = serde_norway::from_str(yaml).unwrap();
        let allowed = allow.iter().map(|s| s.to_string()).collect();
        let check = |p: &str| {
            if p.starts_with('/') || p.contains("..") {
                Err("outside the checkout".to_string())
            } else if p == "link.txt" {
                Err("is a symlink".to_string())
            } else {
                Ok(())
            }
        };
        check_compose("compose.yml", &doc, &allowed, &check)
    }

    fn rules(v: &Verdict) -> Vec<&'static str> {
        v.refused.iter().map(|x| x.rule).collect()
    }

    fn svc(body: &str) -> String {
        format!("services:\n  app:\n    image: x\n{body}")
    }

    #[test]
    fn a_plain_recipe_passes() {
        let v = judge(
            "services:\n  app:\n    image: x\n    volumes:\n      - data:/data\n      - /anon\n      - type: volume\n        source: data\n        target: /d2\n      - type: tmpfs\n        target: /tmp\n    tmpfs: [/run]\n    extra_hosts: ['a:1.2.3.4']\n    sysctls: {net.core.somaxconn: 1024}\n    security_opt: ['no-new-privileges:true']\n    privileged: false\n    cap_drop: [ALL]\n    env_file: .env\n    network_mode: bridge\nnetworks:\n  proxy:\n    external: true\nvolumes:\n  data:\n  nfs:\n    driver_opts: {type: nfs, o: 'addr=10.0.0.1', device: ':/export'}\nsecrets:\n  s:\n    external: true\n    name: ${STACK_NAME}_s_${SECRET_S_VERSION}\nconfigs:\n  c:\n    name: ${STACK_NAME}_c_v1\n    file: page.txt\n",
        );
        assert_eq!(v, Verdict::default(), "{v:?}");
    }

    #[test]
    fn host_paths_are_refused_in_every_syntax() {
        for body in [
            "    volumes: ['/etc:/host-etc']\n",
            "    volumes: ['./conf:/conf:ro']\n",
            "    volumes: ['~/x:/x']\n",
            "    volumes: ['../up:/x']\n",
            "    volumes: ['${HOST_DIR}:/x']\n",
            "    volumes:\n      - type: bind\n        source: /\n        target: /host\n",
            "    volumes:\n      - type: volume\n        source: data\n        target: /d\n        bind: {propagation: rshared}\n",
            "    volumes:\n      - type: npipe\n        source: x\n        target: /x\n",
            "    volumes:\n      - type: ${T}\n        source: /etc\n        target: /x\n",
        ] {
            let v = judge(&svc(body));
            assert_eq!(rules(&v), vec!["bind-mount"], "{body}: {v:?}");
            let shown = v.refused[0].to_string();
            assert!(
                shown.starts_with("compose.yml: service `app`: key `volumes[0]"),
                "{shown}"
            );
        }
    }

    #[test]
    fn volume_drivers_that_bind_are_host_paths() {
        for opts in [
            "{type: none, o: bind, device: /srv}",
            "{o: 'ro,rbind', device: /srv}",
            "{type: ext4, device: /dev/sda1}",
            "{type: none, device: '${DIR}'}",
        ] {
            let v = judge(&format!(
                "services:\n  app:\n    image: x\n    volumes: ['data:/d']\nvolumes:\n  data:\n    driver_opts: {opts}\n"
            ));
            assert_eq!(rules(&v), vec!["bind-mount"], "{opts}: {v:?}");
            assert_eq!(v.refused[0].place, "volumes `data`");
        }
        let v = judge(
            "services: {}\nvolumes:\n  s:\n    driver_opts: {type: none, o: bind, device: /var/run/docker.sock}\n",
        );
        assert_eq!(rules(&v), vec!["docker-socket"]);
    }

    #[test]
    fn the_docker_socket_in_any_form() {
        for body in [
            "    volumes: ['/var/run/docker.sock:/var/run/docker.sock']\n",
            "    volumes: ['/run/docker.sock:/s:ro']\n",
            "    volumes:\n      - type: bind\n        source: /var/run/docker.sock\n        target: /s\n",
        ] {
            assert_eq!(rules(&judge(&svc(body))), vec!["docker-socket"], "{body}");
        }
        // The directory holding it is a host path (and not covered by allowing the socket).
        let v = judge_allowing(&svc("    volumes: ['/var/run:/r']\n"), &["docker-socket"]);
        assert_eq!(rules(&v), vec!["bind-mount"]);
    }

    #[test]
    fn privileges_and_namespaces() {
        let cases = [
            ("    privileged: true\n", "privileged"),
            ("    privileged: ${P}\n", "privileged"),
            ("    cap_add: [SYS_ADMIN]\n", "cap_add"),
            ("    devices: ['/dev/kvm:/dev/kvm']\n", "devices"),
            ("    device_cgroup_rules: ['c 1:3 mr']\n", "devices"),
            ("    gpus: all\n", "devices"),
            ("    network_mode: host\n", "host-namespace"),
            ("    network_mode: container:abc\n", "host-namespace"),
            ("    network_mode: ${MODE}\n", "host-namespace"),
            ("    pid: host\n", "host-namespace"),
            ("    ipc: host\n", "host-namespace"),
            ("    userns_mode: host\n", "host-namespace"),
            ("    uts: host\n", "host-namespace"),
            ("    cgroup: host\n", "host-namespace"),
            (
                "    security_opt: ['apparmor:unconfined']\n",
                "security_opt",
            ),
            ("    security_opt: ['seccomp=unconfined']\n", "security_opt"),
            ("    security_opt: ['label=disable']\n", "security_opt"),
            ("    security_opt: ['label:disable']\n", "security_opt"),
            (
                "    security_opt: ['systempaths=unconfined']\n",
                "security_opt",
            ),
            ("    cgroup_parent: /system.slice\n", "cgroup_parent"),
            ("    volumes_from: [other]\n", "volumes_from"),
        ];
        for (body, rule) in cases {
            let v = judge(&svc(body));
            assert_eq!(rules(&v), vec![rule], "{body}: {v:?}");
        }
    }

    #[test]
    fn files_outside_the_checkout_or_through_symlinks() {
        for doc in [
            "services: {}\nconfigs:\n  c:\n    name: ${STACK_NAME}_c\n    file: /etc/shadow\n",
            "services: {}\nsecrets:\n  s:\n    name: ${STACK_NAME}_s\n    file: ../../x\n",
            "services: {}\nsecrets:\n  s:\n    name: ${STACK_NAME}_s\n    file: link.txt\n",
            "services: {}\nconfigs:\n  c:\n    name: ${STACK_NAME}_c\n    file: ${F}\n",
            "services:\n  app:\n    image: x\n    env_file: /etc/environment\n",
            "services:\n  app:\n    image: x\n    env_file: [ok.env, {path: ../x.env}]\n",
            "services:\n  app:\n    image: x\n    extends: {file: /tmp/base.yml, service: a}\n",
        ] {
            assert_eq!(rules(&judge(doc)), vec!["file-outside"], "{doc}");
        }
        let v = judge(
            "services: {}\nsecrets:\n  s:\n    name: ${STACK_NAME}_s\n    environment: HOME\n",
        );
        assert_eq!(rules(&v), vec!["host-environment"]);
    }

    #[test]
    fn objects_of_other_stacks() {
        for doc in [
            "services: {}\nsecrets:\n  s:\n    external: true\n",
            "services: {}\nsecrets:\n  s:\n    external: true\n    name: other_app_db_password_v1\n",
            "services: {}\nvolumes:\n  d:\n    name: other_app_data\n",
            "services: {}\nvolumes:\n  d:\n    external: true\n",
            "services: {}\nvolumes:\n  d:\n    external: true\n    name: ${STACK_NAME}_d\n",
            "services: {}\nconfigs:\n  c:\n    name: ${STACK_NAME}_../x\n",
        ] {
            assert_eq!(rules(&judge(doc)), vec!["foreign-object"], "{doc}");
        }
        for doc in [
            "services: {}\nnetworks:\n  h:\n    external: true\n    name: host\n",
            "services: {}\nnetworks:\n  host:\n    external: true\n",
            "services: {}\nnetworks:\n  n:\n    driver: host\n",
            "services: {}\nnetworks:\n  n:\n    external: true\n    name: ${NET}\n",
        ] {
            assert_eq!(rules(&judge(doc)), vec!["host-namespace"], "{doc}");
        }
        // External networks (the shared `proxy`) are how recipes reach the proxy: allowed.
        assert!(
            judge("services: {}\nnetworks:\n  proxy:\n    external: true\n")
                .refused
                .is_empty()
        );
    }

    #[test]
    fn operator_allowances_move_refusals_to_notes() {
        let yaml = svc(
            "    volumes: ['/var/run/docker.sock:/var/run/docker.sock:ro']\n    privileged: true\n",
        );
        let v = judge_allowing(&yaml, &["docker-socket"]);
        assert_eq!(rules(&v), vec!["privileged"]);
        assert_eq!(v.allowed.len(), 1);
        assert_eq!(v.allowed[0].rule, "docker-socket");
        let v = judge_allowing(&yaml, &["docker-socket", "privileged"]);
        assert!(v.refused.is_empty());
        assert_eq!(v.allowed.len(), 2);
    }

    #[test]
    fn every_rule_is_named_and_reachable() {
        for (r, _) in RULES {
            assert!(is_rule(r));
        }
        assert!(!is_rule("everything"));
    }

    #[test]
    fn repositories_of_sources() {
        assert_eq!(
            repository_of("https://git.coopcloud.tech/coop-cloud/Traefik.git").as_deref(),
            Some("coop-cloud/traefik")
        );
        assert_eq!(
            repository_of("git@host:owner/name").as_deref(),
            Some("owner/name")
        );
        assert_eq!(repository_of("/tmp/x/web/").as_deref(), Some("x/web"));
        assert_eq!(repository_of("web"), None);
    }
}
