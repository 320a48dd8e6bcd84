//! Servers, apps, secrets, volumes and recipe versions: everything except deploying and backups.

use std::fs;

use anyhow::{Context, Result, bail};
use rand::Rng;
use rand::distributions::Alphanumeric;

use crate::docker::docker;
use crate::envfile;
use crate::git;
use crate::state::{self, AbraDir, stack_name};

pub fn server_add_local(dir: &AbraDir) -> Result<()> {
    let p = dir.servers().join("default");
    fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    println!(
        "server `default` (the local Docker engine) added: {}",
        p.display()
    );
    Ok(())
}

pub fn app_new(
    dir: &AbraDir,
    recipe: &str,
    server: &str,
    domain: &str,
    secrets: bool,
) -> Result<()> {
    let checkout = dir.recipe(recipe)?;
    if !git::is_repo(&checkout) {
        bail!(
            "recipe `{recipe}` is not checked out at {}: clone it there first",
            checkout.display()
        );
    }
    let env_path = dir.env_file_for_new(server, domain)?;
    if env_path.exists() {
        bail!(
            "app `{domain}` already exists ({}); remove it first with `abra app rm {domain}`",
            env_path.display()
        );
    }
    // Like abra: a new app starts from the recipe's latest release, and its env file from that
    // release's .env.sample, pinned with `TYPE=<recipe>:<version>`.
    let latest = git::latest_release(&checkout)?;
    if let Some(tag) = &latest {
        git::checkout(&checkout, tag)?;
        println!("recipe `{recipe}` checked out at its latest release {tag}");
    } else {
        println!("recipe `{recipe}` has no release tags; staying on the current checkout");
    }
    let sample_path = checkout.join(".env.sample");
    let sample = state::read(&sample_path)
        .with_context(|| format!("recipe `{recipe}` has no readable .env.sample"))?;
    let mut env = envfile::from_sample(&sample, domain);
    if let Some(tag) = &latest {
        env = envfile::with_type_line(&env, &format!("{recipe}:{tag}"));
    }
    state::write(&env_path, &env)?;
    println!("app `{domain}` created: {}", env_path.display());
    if secrets {
        generate_secrets(domain, &env)?;
    }
    Ok(())
}

fn generate_secrets(domain: &str, env: &str) -> Result<()> {
    let stack = stack_name(domain);
    let decls = envfile::secret_decls(env);
    if decls.is_empty() {
        println!("the recipe declares no secrets");
        return Ok(());
    }
    let mut rows = Vec::new();
    for d in &decls {
        // Like abra: the operator inserts these by hand.
        if !d.generate {
            println!("secret {} is marked generate=false: not generated", d.name);
            continue;
        }
        let value: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(d.length.unwrap_or(envfile::DEFAULT_SECRET_LENGTH))
            .map(char::from)
            .collect();
        let name = format!("{stack}_{}_{}", d.name, d.version);
        if name.len() > 64 {
            bail!(
                "secret name `{name}` is longer than swarm's 64 characters: use a shorter domain"
            );
        }
        // No stack namespace label: like abra's, these secrets outlive `app undeploy`.
        docker(["secret", "create", &name, "-"])
            .stdin(value.as_bytes())
            .run()
            .with_context(|| format!("cannot create secret {name}"))?;
        rows.push((d.name.clone(), value));
    }
    println!("generated secrets:");
    print!("{}", secret_table(&rows));
    Ok(())
}

/// The table of generated secrets: a header with `NAME` and `VALUE`, then a row per secret,
/// cells between `│` with a space on each side and no padding (cc-ci parses this to redact).
pub fn secret_table(rows: &[(String, String)]) -> String {
    let mut s = String::from("│ NAME │ VALUE │\n");
    for (name, value) in rows {
        s.push_str(&format!("│ {name} │ {value} │\n"));
    }
    s
}

/// `app secret insert <domain> <name> <version> <value>`: the swarm secret
/// `<stack>_<name>_<version>`, kept across undeploys like abra's.
pub fn secret_insert(
    dir: &AbraDir,
    domain: &str,
    name: &str,
    version: &str,
    value: &str,
) -> Result<()> {
    dir.env_file(domain)?;
    let stack = stack_name(domain);
    for (what, v) in [("name", name), ("version", version)] {
        if v.is_empty()
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("invalid secret {what} `{v}`: use letters, digits, `_` and `-`");
        }
    }
    let full = format!("{stack}_{name}_{version}");
    if full.len() > 64 {
        bail!("secret name `{full}` is longer than swarm's 64 characters: use a shorter domain");
    }
    docker(["secret", "create", &full, "-"])
        .stdin(value.as_bytes())
        .run()
        .with_context(|| format!("cannot create secret {full}"))?;
    println!("secret {name} (version {version}) inserted into {domain}");
    Ok(())
}

pub fn recipe_versions(dir: &AbraDir, recipe: &str) -> Result<()> {
    let checkout = dir.recipe(recipe)?;
    if !git::is_repo(&checkout) {
        bail!(
            "recipe `{recipe}` is not checked out at {}",
            checkout.display()
        );
    }
    for v in git::releases(&checkout)? {
        println!("{v}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_table_has_header_and_unpadded_rows() {
        let t = secret_table(&[
            ("db_password".into(), "Zx81".into()),
            ("k".into(), "v".into()),
        ]);
        assert_eq!(t, "│ NAME │ VALUE │\n│ db_password │ Zx81 │\n│ k │ v │\n");
    }
}
