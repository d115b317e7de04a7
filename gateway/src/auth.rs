//! Users, roles and API tokens, kept in `users.sqlite` under the data directory.
//!
//! | role | may |
//! |---|---|
//! | `viewer` | read: alarms, the live stream |
//! | `operator` | also acknowledge and shelve alarms |
//! | `engineer` | also change thresholds, devices and firmware (campaigns) |
//! | `admin` | also manage users |
//!
//! Passwords are stored as Argon2id PHC strings (the `argon2` crate's defaults). API tokens
//! are 32 random bytes from the operating system, shown once, and stored as their SHA-256:
//! a token has 256 bits of entropy, so a fast hash is enough and lets every request look its
//! token up by hash.
//!
//! There is no default password. When the store has no admin, opening it creates user
//! `admin` with a random one-time password that the caller prints once; the admin is expected
//! to change it. Every write through the API is recorded in the `audit` table (who, when,
//! what, the old and new value, why).

use std::path::Path;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

/// What a user may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read.
    Viewer,
    /// Acknowledge and shelve.
    Operator,
    /// Thresholds, devices, firmware.
    Engineer,
    /// Users.
    Admin,
}

impl Role {
    /// Its name.
    pub fn key(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Engineer => "engineer",
            Role::Admin => "admin",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Engineer, Role::Admin]
            .into_iter()
            .find(|r| r.key() == s)
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// User name.
    pub user: String,
    /// Role.
    pub role: Role,
}

/// Why the user store failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// SQLite.
    #[error("user store: {0}")]
    Store(#[from] rusqlite::Error),
    /// Hashing.
    #[error("password hashing: {0}")]
    Hash(String),
    /// The operating system's random source.
    #[error("random source: {0}")]
    Random(String),
}

/// One audited write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// Who.
    pub user: String,
    /// What, e.g. `acknowledge_alarm`.
    pub action: String,
    /// On what, e.g. `cp-lel-05/ch0/threshold`.
    pub target: String,
    /// Why, as the user said.
    pub reason: String,
}

/// One audited write with what it changed.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditDetail {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// Who.
    pub user: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Before, as the writer recorded it.
    pub old: Option<String>,
    /// After.
    pub new: Option<String>,
    /// Why.
    pub reason: String,
}

/// The user store.
pub struct Users {
    conn: Connection,
}

fn random_hex(bytes: usize) -> Result<String, AuthError> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hash_password(password: &str) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

impl Users {
    /// Opens (creating if needed) the store at `path`. Returns the one-time password of the
    /// `admin` user when it had to be created.
    pub fn open(path: &Path) -> Result<(Users, Option<String>), AuthError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS user (
                 name TEXT PRIMARY KEY, role TEXT NOT NULL, password TEXT NOT NULL,
                 created_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS token (
                 hash TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES user(name),
                 created_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS audit (
                 at_ms INTEGER NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
                 target TEXT NOT NULL, old TEXT, new TEXT, reason TEXT);",
        )?;
        let users = Users { conn };
        let has_admin: bool = users.conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM user WHERE role = 'admin')",
            [],
            |r| r.get(0),
        )?;
        let secret = if has_admin {
            None
        } else {
            let password = random_hex(12)?;
            users.add_user("admin", Role::Admin, &password)?;
            users.audit(
                "system",
                "create_user",
                "admin",
                None,
                Some("admin"),
                "first run",
            )?;
            Some(password)
        };
        Ok((users, secret))
    }

    /// Adds (or replaces) a user.
    pub fn add_user(&self, name: &str, role: Role, password: &str) -> Result<(), AuthError> {
        let hash = hash_password(password)?;
        self.conn.execute(
            "INSERT INTO user (name, role, password, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET role = excluded.role, password = excluded.password",
            params![name, role.key(), hash, crate::pipeline::unix_ms() as i64],
        )?;
        Ok(())
    }

    /// Checks a password; on success issues a new API token (shown once).
    pub fn login(&self, name: &str, password: &str) -> Result<Option<(String, Role)>, AuthError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT role, password FROM user WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        // Hash anyway when the user is unknown, so that timing does not tell which names exist.
        let (role, stored) = row.unwrap_or_else(|| {
            (
                String::new(),
                "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0123456789abcdef0123456789abcdef0123456789A"
                    .into(),
            )
        });
        let ok = PasswordHash::new(&stored).ok().is_some_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        let Some(role) = Role::parse(&role).filter(|_| ok) else {
            return Ok(None);
        };
        let token = random_hex(32)?;
        self.conn.execute(
            "INSERT INTO token (hash, user, created_ms) VALUES (?1, ?2, ?3)",
            params![token_hash(&token), name, crate::pipeline::unix_ms() as i64],
        )?;
        Ok(Some((token, role)))
    }

    /// The user a token belongs to.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>, AuthError> {
        Ok(self
            .conn
            .query_row(
                "SELECT u.name, u.role FROM token t JOIN user u ON u.name = t.user WHERE t.hash = ?1",
                [token_hash(token)],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .and_then(|(user, role)| Role::parse(&role).map(|role| Principal { user, role })))
    }

    /// Records a write.
    pub fn audit(
        &self,
        user: &str,
        action: &str,
        target: &str,
        old: Option<&str>,
        new: Option<&str>,
        reason: &str,
    ) -> Result<(), AuthError> {
        self.conn.execute(
            "INSERT INTO audit (at_ms, user, action, target, old, new, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                crate::pipeline::unix_ms() as i64,
                user,
                action,
                target,
                old,
                new,
                reason
            ],
        )?;
        Ok(())
    }

    /// The audit trail, newest first: (at_ms, user, action, target, reason).
    pub fn audit_trail(&self, limit: usize) -> Result<Vec<AuditEntry>, AuthError> {
        let mut stmt = self.conn.prepare(
            "SELECT at_ms, user, action, target, COALESCE(reason, '') FROM audit
             ORDER BY rowid DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(AuditEntry {
                    at_ms: r.get(0)?,
                    user: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    reason: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Audited writes on `target` and everything under it (`target/...`), oldest first.
    pub fn audit_of_target(&self, target: &str) -> Result<Vec<AuditDetail>, AuthError> {
        let mut stmt = self.conn.prepare(
            "SELECT at_ms, user, action, target, old, new, COALESCE(reason, '') FROM audit
             WHERE target = ?1 OR substr(target, 1, length(?1) + 1) = ?1 || '/'
             ORDER BY rowid",
        )?;
        let rows = stmt
            .query_map([target], |r| {
                Ok(AuditDetail {
                    at_ms: r.get(0)?,
                    user: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    old: r.get(4)?,
                    new: r.get(5)?,
                    reason: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Audited writes of the given actions with what they changed, newest first.
    pub fn audit_detail(
        &self,
        actions: &[&str],
        limit: usize,
    ) -> Result<Vec<AuditDetail>, AuthError> {
        let mut stmt = self.conn.prepare(
            "SELECT at_ms, user, action, target, old, new, COALESCE(reason, '') FROM audit
             WHERE action IN (SELECT value FROM json_each(?1))
             ORDER BY rowid DESC LIMIT ?2",
        )?;
        let actions = serde_json::to_string(actions).unwrap_or_else(|_| "[]".into());
        let rows = stmt
            .query_map(params![actions, limit as i64], |r| {
                Ok(AuditDetail {
                    at_ms: r.get(0)?,
                    user: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    old: r.get(4)?,
                    new: r.get(5)?,
                    reason: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
