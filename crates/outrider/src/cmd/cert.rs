//! `outrider cert`: a lab CA, and server and agent certificates signed by it, so that a
//! manager with TLS and agents with client certificates can run on one machine. Keys are
//! ECDSA P-256, written with mode 0600; existing files are kept unless `--force`.

use std::{
    io::Write,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// `outrider cert …`.
#[derive(clap::Subcommand, Debug)]
pub enum CertCommand {
    /// A lab CA: `ca.pem` and `ca-key.pem` in --out.
    Ca {
        /// Directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u16).range(1..=3650))]
        days: u16,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// A server certificate for the manager: `server.pem` and `server-key.pem` in --out.
    Server {
        /// Directory of the CA (`ca.pem`, `ca-key.pem`).
        #[arg(long)]
        ca: PathBuf,
        /// Directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// DNS name the manager is reached by (repeatable).
        #[arg(long = "name", default_values_t = ["localhost".to_owned()])]
        names: Vec<String>,
        /// IP address the manager is reached by (repeatable).
        #[arg(long = "ip", default_values_t = [IpAddr::from([127, 0, 0, 1])])]
        ips: Vec<IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u16).range(1..=3650))]
        days: u16,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// An agent's client certificate naming its tenant and name (SAN URI
    /// `outrider://tenant/<T>/agent/<NAME>`): `agent.pem` and `agent-key.pem` in --out.
    Agent {
        /// Directory of the CA (`ca.pem`, `ca-key.pem`).
        #[arg(long)]
        ca: PathBuf,
        /// Tenant whose instances the agent may register.
        #[arg(long)]
        tenant: String,
        /// The agent's name (its events' actor is `agent:<NAME>`).
        #[arg(long)]
        name: String,
        /// Directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days (short: agents' certificates are renewed often).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=3650))]
        days: u16,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// A certificate and its key, in PEM.
struct Issued {
    cert: String,
    key: String,
}

/// Validity from a minute ago (clocks differ a little) to `days` from now.
fn validity(params: &mut CertificateParams, days: u16) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(i64::from(days));
}

fn make_ca(days: u16) -> anyhow::Result<Issued> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "Outrider lab CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    Ok(Issued { cert: cert.pem(), key: key.serialize_pem() })
}

/// Signs `params` with the CA in `ca_dir`.
fn sign(ca_dir: &Path, mut params: CertificateParams, days: u16) -> anyhow::Result<Issued> {
    let read = |file: &str| {
        let path = ca_dir.join(file);
        std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (made by `outrider cert ca`)", path.display()))
    };
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")?).context("ca-key.pem holds no usable private key")?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).context("ca.pem holds no usable certificate")?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued { cert: cert.pem(), key: key.serialize_pem() })
}

fn make_server(ca: &Path, names: &[String], ips: &[IpAddr], days: u16) -> anyhow::Result<Issued> {
    let mut params = CertificateParams::new(names.to_vec()).context("invalid --name")?;
    params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, names.first().map_or("outrider manager", String::as_str));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sign(ca, params, days)
}

fn make_agent(ca: &Path, tenant: &str, name: &str, days: u16) -> anyhow::Result<Issued> {
    outrider_model::validate_name("tenant", tenant).map_err(|e| anyhow::anyhow!("{e}"))?;
    outrider_model::validate_name("agent name", name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut params = CertificateParams::default();
    let uri = outrider_manager::agent_uri(tenant, name);
    params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().context("agent URI")?)];
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, format!("agent:{name}"));
    params.distinguished_name.push(DnType::OrganizationalUnitName, tenant);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign(ca, params, days)
}

/// Writes `issued` as `<stem>.pem` and `<stem>-key.pem` (mode 0600) in `out`; refuses to
/// replace either unless `force`.
fn write(out: &Path, stem: &str, issued: &Issued, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert = out.join(format!("{stem}.pem"));
    let key = out.join(format!("{stem}-key.pem"));
    if !force {
        for path in [&cert, &key] {
            anyhow::ensure!(!path.exists(), "{} exists; pass --force to replace it", path.display());
        }
    }
    let put = |path: &Path, text: &str, mode: u32| -> anyhow::Result<()> {
        // Removed first, so that a replaced key never keeps an older, wider mode.
        if force && path.exists() {
            std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    put(&key, &issued.key, 0o600)?;
    put(&cert, &issued.cert, 0o644)?;
    eprintln!("wrote {} and {}", cert.display(), key.display());
    Ok(())
}

/// Runs `outrider cert …`.
pub fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Ca { out, days, force } => write(&out, "ca", &make_ca(days)?, force),
        CertCommand::Server { ca, out, names, ips, days, force } => {
            write(&out, "server", &make_server(&ca, &names, &ips, days)?, force)
        }
        CertCommand::Agent { ca, tenant, name, out, days, force } => {
            write(&out, "agent", &make_agent(&ca, &tenant, &name, days)?, force)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn files_are_private_and_never_replaced_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        run(CertCommand::Ca { out: ca.clone(), days: 10, force: false }).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca.join("ca-key.pem")), 0o600);
        let before = std::fs::read(ca.join("ca-key.pem")).unwrap();
        let again = run(CertCommand::Ca { out: ca.clone(), days: 10, force: false }).unwrap_err();
        assert!(again.to_string().contains("--force"), "{again}");
        assert_eq!(std::fs::read(ca.join("ca-key.pem")).unwrap(), before, "kept without --force");
        run(CertCommand::Ca { out: ca.clone(), days: 10, force: true }).unwrap();
        assert_ne!(std::fs::read(ca.join("ca-key.pem")).unwrap(), before, "replaced with --force");
        assert_eq!(mode(&ca.join("ca-key.pem")), 0o600);

        let agent = dir.path().join("agent");
        let bad = make_agent(&ca, "no/slash", "a", 1).err().unwrap();
        assert!(bad.to_string().contains("tenant"), "{bad}");
        let missing = make_agent(&dir.path().join("nothing"), "t", "a", 1).err().unwrap();
        assert!(missing.to_string().contains("outrider cert ca"), "{missing}");
        run(CertCommand::Agent {
            ca: ca.clone(),
            tenant: "t".into(),
            name: "a".into(),
            out: agent.clone(),
            days: 1,
            force: false,
        })
        .unwrap();
        assert_eq!(mode(&agent.join("agent-key.pem")), 0o600);
    }
}
