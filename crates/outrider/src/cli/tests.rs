//! Parsing of the command line, and what the tables show.

use clap::{CommandFactory, Parser};
use outrider_client::{Distribution, VersionCount};
use outrider_model::{Instance, Priority, UpgradeMode};

use super::{input, render, *};

/// The resource commands as a whole program, the way `main` mounts them.
#[derive(Parser, Debug)]
#[command(name = "outrider")]
struct Cli {
    #[command(subcommand)]
    cmd: ResourceCommand,
}

fn parse(line: &str) -> Result<ResourceCommand, clap::Error> {
    Cli::try_parse_from(std::iter::once("outrider").chain(line.split_whitespace())).map(|c| c.cmd)
}

/// The verb of `line`, which must parse as resource `$variant`.
macro_rules! verb {
    ($line:expr, $variant:ident) => {
        match parse($line).unwrap() {
            ResourceCommand::$variant(verb) => *verb,
            other => panic!("{:?} parsed as {other:?}", $line),
        }
    };
}

#[test]
fn command_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn binding_set_takes_flags_after_the_verb() {
    let BindingCommand::Set { service, sidecar, version, mode, disable, conn } =
        verb!("binding set checkout mesh --version 1.2.0 --mode hot -o json", Binding)
    else {
        panic!("not binding set");
    };
    assert_eq!((service.as_str(), sidecar.as_str(), version.as_str()), ("checkout", "mesh", "1.2.0"));
    assert_eq!(mode, UpgradeMode::Hot);
    assert!(!disable);
    assert_eq!(conn.output, OutputFormat::Json);
}

#[test]
fn connection_flags_have_defaults_and_overrides() {
    let BindingCommand::Set { mode, disable, conn, .. } =
        verb!("binding set checkout mesh --version 1.2.0 --disable", Binding)
    else {
        panic!("not binding set");
    };
    assert_eq!(mode, UpgradeMode::Restart);
    assert!(disable);
    assert_eq!(conn.output, OutputFormat::Table);
    assert_eq!(conn.manager, "http://127.0.0.1:7070");
    assert_eq!(conn.tenant, "default");
    assert_eq!(conn.token_file, None);

    let SidecarCommand::List { conn } =
        verb!("sidecar list --manager http://m:1 --tenant payments --token-file /t --output json", Sidecar)
    else {
        panic!("not sidecar list");
    };
    assert_eq!(conn.manager, "http://m:1");
    assert_eq!(conn.tenant, "payments");
    assert_eq!(conn.token_file.as_deref(), Some(std::path::Path::new("/t")));
    assert_eq!(conn.output, OutputFormat::Json);
}

#[test]
fn bad_values_are_refused() {
    for line in [
        "binding set checkout mesh --version 1.2.0 --mode sideways",
        "binding set checkout mesh",
        "sidecar list -o yaml",
        "version defective mesh 1.0.0",
        "version create mesh",
        "event list --since -1",
        "service create --name a --priority P3",
        "service create --name a --trait lang",
        "service update a",
    ] {
        assert!(parse(line).is_err(), "{line:?} accepted");
    }
}

#[test]
fn create_takes_a_file_or_flags_but_not_both() {
    let cmd = verb!("sidecar create -f -", Sidecar);
    assert!(matches!(&cmd, SidecarCommand::Create { file: Some(f), name: None, .. } if f.as_os_str() == "-"));
    let cmd = verb!("sidecar create --name mesh --owner team-net", Sidecar);
    assert!(
        matches!(&cmd, SidecarCommand::Create { file: None, name: Some(n), owner: Some(o), .. } if n == "mesh" && o == "team-net")
    );
    for line in [
        "sidecar create",
        "sidecar create --owner me",
        "sidecar create -f x.json --name mesh",
        "sidecar create -f x.json --owner me",
    ] {
        assert!(parse(line).is_err(), "{line:?} accepted");
    }

    let cmd = verb!(
        "service create --name checkout --priority p0 --trait lang=go --trait protocol=http --protected",
        Service
    );
    let ServiceCommand::Create { file: None, name: Some(name), priority, traits, protected, .. } = cmd else {
        panic!("parsed as {cmd:?}");
    };
    let service = input::service_from_flags(name, priority, traits, protected).unwrap();
    assert_eq!(service.priority, Priority::P0);
    assert_eq!(service.traits["protocol"], "http");
    assert!(service.protected);
    assert!(parse("service create -f svc.json").is_ok());
    for line in [
        "service create -f svc.json --priority P1",
        "service create -f svc.json --protected",
        "service create --protected",
    ] {
        assert!(parse(line).is_err(), "{line:?} accepted");
    }
}

#[test]
fn other_verbs_parse() {
    let VersionCommand::Admit { evidence, .. } = verb!("version admit mesh 1.2.0 --evidence {\"ci\":42}", Version)
    else {
        panic!("not version admit");
    };
    assert_eq!(input::evidence(evidence), serde_json::json!({"ci": 42}));
    assert!(parse("version defective mesh 1.2.0 --reason crashes").is_ok());
    assert!(parse("version distribution mesh -o json").is_ok());
    assert!(parse("tenant create payments").is_ok());
    let InstanceCommand::List { service, region, stage, env, conn, .. } =
        verb!("instance list --service checkout --region boe --stage canary --tenant t", Instance);
    assert_eq!(
        (service.as_deref(), region.as_deref(), stage.as_deref(), env),
        (Some("checkout"), Some("boe"), Some("canary"), None)
    );
    assert_eq!(conn.tenant, "t");
    let cmd = verb!("event follow --since 5 -o json", Event);
    assert!(matches!(cmd, EventCommand::Follow { since: Some(5), plan: None, .. }));
}

#[test]
fn flags_build_bodies_with_model_defaults() {
    let s = input::sidecar_from_flags("mesh".into(), None, Some("proxy".into())).unwrap();
    assert_eq!(s.description, "proxy");
    assert!(!s.upgrade_modes.is_empty());
    let dup = vec![("lang".to_owned(), "go".to_owned()), ("lang".to_owned(), "rust".to_owned())];
    assert!(input::service_from_flags("a".into(), None, dup, false).is_err());
    assert_eq!(input::evidence(Some("manual test".into())), serde_json::json!("manual test"));
    assert!(input::evidence(None).is_string());
    let err = input::parse_json::<outrider_model::Sidecar>("name: x", "s.yaml", "sidecar").unwrap_err();
    assert!(format!("{err:#}").starts_with("s.yaml does not hold a valid sidecar"));
}

#[test]
fn instance_table_shows_each_sidecar() {
    let instances: Vec<Instance> = serde_json::from_value(serde_json::json!([{
        "id": "i-1", "service": "checkout", "region": "boe", "env": "prod", "stage": "canary",
        "connected": true, "last_seen": "2026-01-01T00:00:00Z",
        "sidecars": [
            {"name": "mesh", "version": "1.2.0", "state": "running", "pid": 42, "restarts": 1},
            {"name": "logs", "version": "0.9.0", "state": "crash_loop", "restarts": 7}
        ]
    }]))
    .unwrap();
    let text = render::instances(&instances).trim_fmt();
    assert!(text.starts_with("ID"), "{text}");
    for want in [
        "i-1",
        "checkout",
        "boe",
        "prod",
        "canary",
        "yes",
        "mesh@1.2.0 running pid=42 restarts=1",
        "logs@0.9.0 crash_loop pid=- restarts=7",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
}

#[test]
fn distribution_table_shows_shares_and_total() {
    let d = Distribution {
        sidecar: "mesh".into(),
        total: 4,
        versions: vec![
            VersionCount { version: "1.0.0".into(), instances: 3 },
            VersionCount { version: "1.1.0".into(), instances: 1 },
        ],
    };
    let text = render::distribution(&d).trim_fmt();
    assert!(text.contains("75.0%") && text.contains("25.0%") && text.contains("total"), "{text}");
}
