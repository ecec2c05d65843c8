//! A development setup: the example config and a dev CA with every identity's certificate, in a
//! folder — what `coalitiond demo`, `certs init`, the benches and the behaviour tests start from.

use crate::config::Config;
use anyhow::Context;
use coalition_certs::{Authority, Identity, Role};
use std::path::{Path, PathBuf};

/// The example config, shipped in the binary.
pub const EXAMPLE_CONFIG: &str = include_str!("../../coalition.example.toml");

/// Writes a development setup into `dir`: `coalition.toml` (the example, listening on `listen`,
/// its database in `dir`), and certificates under `dir/certs/dev`. Returns the loaded config.
pub fn write_dev_setup(dir: &Path, listen: &str) -> anyhow::Result<Config> {
    write_dev_setup_on(dir, listen, "sqlite://coalition.db")
}

/// [`write_dev_setup`] with another database URL.
pub fn write_dev_setup_on(dir: &Path, listen: &str, database_url: &str) -> anyhow::Result<Config> {
    std::fs::create_dir_all(dir.join("certs/dev"))?;
    let text = EXAMPLE_CONFIG
        .replacen(
            "listen = \"127.0.0.1:7443\"",
            &format!("listen = \"{listen}\""),
            1,
        )
        .replacen(
            "url = \"sqlite://data/coalition.db\"",
            &format!("url = \"{database_url}\""),
            1,
        )
        .replacen(
            "metrics_listen = \"127.0.0.1:9464\"",
            "metrics_listen = \"127.0.0.1:0\"",
            1,
        );
    let path = dir.join("coalition.toml");
    std::fs::write(&path, text)?;
    let config = Config::load(&path)?;
    certs_init(&config, &dir.join("certs/dev"))?;
    Ok(config)
}

/// File stem of a client identity's certificate and key.
pub fn cert_stem(id: &Identity) -> String {
    match id.role {
        Role::Partner => format!("partner-{}", id.name),
        Role::Finance | Role::Operator | Role::Programme => id.role.as_str().to_string(),
    }
}

/// Writes a certificate and its key (the key readable by its owner only).
pub fn write_pair(dir: &Path, stem: &str, cert: &str, key: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(format!("{stem}.pem")), cert)?;
    write_private(&dir.join(format!("{stem}.key")), key)
}

fn write_private(path: &Path, data: &str) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Adds a certificate's serial to the config's CRL (re-signed by the CA beside `tls.ca_cert`).
/// Returns how many serials the CRL lists.
pub fn revoke(config: &Config, cert_pem: &str) -> anyhow::Result<usize> {
    let crl_path = config
        .crl
        .as_ref()
        .context("config has no tls.crl: set one to revoke certificates")?;
    let dir = config
        .ca_cert
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let ca = Authority::load(
        &std::fs::read_to_string(&config.ca_cert)?,
        &std::fs::read_to_string(dir.join("ca.key"))
            .context("reading ca.key beside tls.ca_cert")?,
    )?;
    let mut serials = match std::fs::read_to_string(crl_path) {
        Ok(pem) => coalition_certs::crl_serials(&pem)?,
        Err(_) => vec![],
    };
    let serial = coalition_certs::serial_of(cert_pem)?;
    if !serials.contains(&serial) {
        serials.push(serial);
    }
    let number = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as u64;
    std::fs::write(crl_path, ca.crl(&serials, number, 30)?)?;
    Ok(serials.len())
}

/// Writes a dev CA, server certificate and all client identities for `config` into `dir`.
pub fn certs_init(config: &Config, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = Authority::generate(&format!("{} development CA", config.coalition))?;
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
    write_private(&dir.join("ca.key"), &ca.key_pem)?;
    let server = ca.issue_server(&["localhost", "127.0.0.1", "::1"])?;
    std::fs::write(&config.server_cert, &server.cert_pem)
        .with_context(|| format!("writing {}", config.server_cert.display()))?;
    write_private(&config.server_key, &server.key_pem)?;
    let mut written = vec![dir.join("ca.pem"), config.server_cert.clone()];
    if let Some(crl) = &config.crl {
        std::fs::write(crl, ca.crl(&[], 1, 30)?)?;
        written.push(crl.clone());
    }
    let mut ids: Vec<Identity> = config
        .partners
        .keys()
        .map(|p| Identity {
            role: Role::Partner,
            name: p.clone(),
        })
        .collect();
    ids.push(Identity {
        role: Role::Finance,
        name: "finance".into(),
    });
    ids.push(Identity {
        role: Role::Operator,
        name: "oncall".into(),
    });
    ids.push(Identity {
        role: Role::Programme,
        name: "programme".into(),
    });
    for id in ids {
        let issued = ca.issue_client(&config.coalition, &id, 365)?;
        let stem = cert_stem(&id);
        write_pair(dir, &stem, &issued.cert_pem, &issued.key_pem)?;
        written.push(dir.join(format!("{stem}.pem")));
    }
    Ok(written)
}
