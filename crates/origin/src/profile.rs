//! The AWS shared configuration files (`~/.aws/credentials`, `~/.aws/config`), which
//! `object_store` does not read: the settings of one profile, for what the environment
//! leaves unset.

use std::path::{Path, PathBuf};

use ini::Ini;

/// Settings of one profile, each `None` where neither file has it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// Reads profile `AWS_PROFILE` (else `default`) from `AWS_SHARED_CREDENTIALS_FILE` (else
/// `$HOME/.aws/credentials`, section `[NAME]`) and `AWS_CONFIG_FILE` (else
/// `$HOME/.aws/config`, section `[profile NAME]`, or `[default]`), as the AWS CLI and SDKs
/// do; keys in the credentials file win over the same keys in the config file. `var` looks
/// up an environment variable. A missing file is no error.
///
/// # Errors
/// A file that exists but cannot be read or parsed: its path and the reason.
pub(crate) fn load(var: &dyn Fn(&str) -> Option<String>) -> Result<Profile, String> {
    let name = var("AWS_PROFILE")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let home = var("HOME").map(PathBuf::from);
    let file = |env: &str, default: &str| -> Option<PathBuf> {
        var(env)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let credentials = match file("AWS_SHARED_CREDENTIALS_FILE", "credentials") {
        Some(p) => read(&p)?,
        None => None,
    };
    let config = match file("AWS_CONFIG_FILE", "config") {
        Some(p) => read(&p)?,
        None => None,
    };
    let config_section = if name == "default" {
        name.clone()
    } else {
        format!("profile {name}")
    };
    let get = |key: &str| -> Option<String> {
        let from = |ini: &Option<Ini>, section: &str| {
            ini.as_ref()?
                .section(Some(section))?
                .get(key)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        from(&credentials, &name).or_else(|| from(&config, &config_section))
    };
    Ok(Profile {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key"),
        session_token: get("aws_session_token"),
        region: get("region"),
        endpoint_url: get("endpoint_url"),
    })
}

/// The parsed file, `None` if there is none.
fn read(path: &Path) -> Result<Option<Ini>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ini::load_from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load_with(vars: &[(&str, &str)]) -> Result<Profile, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load(&|k| vars.get(k).cloned())
    }

    #[test]
    fn profiles_come_from_both_files_credentials_first() {
        let dir = tempfile::tempdir().unwrap();
        let aws = dir.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            "# comment\n[default]\naws_access_key_id = AKIDEFAULT\naws_secret_access_key = s0\n\n\
             [boot]\naws_access_key_id=AKIBOOT\naws_secret_access_key = s1\naws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = eu-west-1\n\n[profile boot]\nregion = us-east-2\n\
             endpoint_url = http://127.0.0.1:9000\naws_access_key_id = AKICONFIG\n\n\
             [boot]\nregion = not-this-one\n",
        )
        .unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(
            load_with(&[("HOME", home)]).unwrap(),
            Profile {
                access_key_id: Some("AKIDEFAULT".into()),
                secret_access_key: Some("s0".into()),
                session_token: None,
                region: Some("eu-west-1".into()),
                endpoint_url: None,
            }
        );
        assert_eq!(
            load_with(&[("HOME", home), ("AWS_PROFILE", "boot")]).unwrap(),
            Profile {
                access_key_id: Some("AKIBOOT".into()),
                secret_access_key: Some("s1".into()),
                session_token: Some("tok".into()),
                region: Some("us-east-2".into()),
                endpoint_url: Some("http://127.0.0.1:9000".into()),
            }
        );
        // Files named by the environment instead of HOME's; a profile that is nowhere.
        let moved = dir.path().join("elsewhere");
        std::fs::rename(aws.join("config"), &moved).unwrap();
        let p = load_with(&[
            ("HOME", home),
            ("AWS_PROFILE", "boot"),
            ("AWS_CONFIG_FILE", moved.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(p.region.as_deref(), Some("us-east-2"));
        let p = load_with(&[("HOME", home), ("AWS_PROFILE", "nowhere")]).unwrap();
        assert_eq!(p, Profile::default());
        // No HOME and no files: nothing, and no error.
        assert_eq!(load_with(&[]).unwrap(), Profile::default());
        // A file that cannot be parsed is an error naming it.
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "[unclosed\nkey = v\n").unwrap();
        let e = load_with(&[("AWS_SHARED_CREDENTIALS_FILE", bad.to_str().unwrap())]).unwrap_err();
        assert!(e.contains("bad"), "{e}");
    }
}
