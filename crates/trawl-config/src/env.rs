//! `${VAR}` and `${VAR:-default}` in string values, so secrets and addresses
//! stay out of the file. Expansion happens on parsed values, never on the
//! TOML text, so a variable's content cannot change the file's structure.

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvError {
    #[error("environment variable {0} is not set and has no default (write ${{{0}:-default}})")]
    Unset(String),
    /// The value itself is not shown: it may hold a secret.
    #[error("unterminated ${{ at byte {0} of the value")]
    Unterminated(usize),
}

pub fn expand_env(text: &str) -> Result<String, EnvError> {
    expand_with(text, |name| std::env::var(name).ok())
}

pub(crate) fn expand_table(table: &mut toml::Table) -> Result<(), EnvError> {
    for (_, value) in table.iter_mut() {
        expand_value(value)?;
    }
    Ok(())
}

fn expand_value(value: &mut toml::Value) -> Result<(), EnvError> {
    match value {
        toml::Value::String(s) => *s = expand_env(s)?,
        toml::Value::Array(items) => {
            for item in items {
                expand_value(item)?;
            }
        }
        toml::Value::Table(t) => expand_table(t)?,
        _ => {}
    }
    Ok(())
}

fn expand_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or(EnvError::Unterminated(text.len() - rest.len() + start))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(EnvError::Unset(name.to_owned())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.1.2.3".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_unset_and_defaulted_variables() {
        assert_eq!(
            expand_with("nats://${HOST}:4222", env).unwrap(),
            "nats://10.1.2.3:4222"
        );
        assert_eq!(
            expand_with("${NOPE:-x}/${HOST}", env).unwrap(),
            "x/10.1.2.3"
        );
        assert_eq!(expand_with("${EMPTY:-fallback}", env).unwrap(), "fallback");
        assert_eq!(expand_with("plain $HOST", env).unwrap(), "plain $HOST");
        assert_eq!(
            expand_with("${NOPE}", env),
            Err(EnvError::Unset("NOPE".into()))
        );
        let e = expand_with("s3cr3t-pass${HOST", env).unwrap_err();
        assert!(matches!(e, EnvError::Unterminated(11)), "{e:?}");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }
}
