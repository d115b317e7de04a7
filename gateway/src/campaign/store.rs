//! Campaigns on disk: `campaigns.sqlite` in the data directory, one row per campaign (its
//! description as JSON, and the image itself so that a resumed campaign after a restart can
//! still send it) and one row per node (its state as JSON).
//!
//! Written at every state change of a campaign or a node (not at every chunk: a transfer's
//! byte count is kept in memory and shown live; the store has its last state). WAL with
//! `synchronous = NORMAL`: a power cut may lose the last changes, which is acceptable because
//! a campaign found `running` at start is halted and its in-flight nodes are checked again
//! when it is resumed (a node already on the new version is marked updated without a
//! transfer).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::state::{Campaign, CampaignNode};

/// The file under the data directory.
pub const FILE_NAME: &str = "campaigns.sqlite";

/// The campaign store.
pub struct Store {
    conn: Connection,
}

fn err(e: impl std::fmt::Display) -> String {
    format!("campaign store: {e}")
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, String> {
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS campaign (
                 id INTEGER PRIMARY KEY, doc TEXT NOT NULL, image BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS campaign_node (
                 campaign INTEGER NOT NULL REFERENCES campaign(id), seq INTEGER NOT NULL,
                 doc TEXT NOT NULL, PRIMARY KEY (campaign, seq));",
        )
        .map_err(err)?;
        Ok(Store { conn })
    }

    /// Saves a new campaign with its image and nodes.
    pub fn insert(&mut self, c: &Campaign, image: &[u8]) -> Result<(), String> {
        let tx = self.conn.transaction().map_err(err)?;
        let mut head = c.clone();
        head.nodes.clear();
        tx.execute(
            "INSERT INTO campaign (id, doc, image) VALUES (?1, ?2, ?3)",
            params![
                c.id as i64,
                serde_json::to_string(&head).map_err(err)?,
                image
            ],
        )
        .map_err(err)?;
        for (seq, n) in c.nodes.iter().enumerate() {
            tx.execute(
                "INSERT INTO campaign_node (campaign, seq, doc) VALUES (?1, ?2, ?3)",
                params![
                    c.id as i64,
                    seq as i64,
                    serde_json::to_string(n).map_err(err)?
                ],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Saves a campaign's own fields (not its nodes).
    pub fn save_head(&self, c: &Campaign) -> Result<(), String> {
        let mut head = c.clone();
        head.nodes.clear();
        self.conn
            .execute(
                "UPDATE campaign SET doc = ?2 WHERE id = ?1",
                params![c.id as i64, serde_json::to_string(&head).map_err(err)?],
            )
            .map_err(err)?;
        Ok(())
    }

    /// Saves node `seq` of campaign `id`.
    pub fn save_node(&self, id: u64, seq: usize, n: &CampaignNode) -> Result<(), String> {
        self.conn
            .execute(
                "UPDATE campaign_node SET doc = ?3 WHERE campaign = ?1 AND seq = ?2",
                params![
                    id as i64,
                    seq as i64,
                    serde_json::to_string(n).map_err(err)?
                ],
            )
            .map_err(err)?;
        Ok(())
    }

    /// Every campaign with its image, oldest first.
    pub fn load(&self) -> Result<Vec<(Campaign, Vec<u8>)>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, doc, image FROM campaign ORDER BY id")
            .map_err(err)?;
        let heads = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let mut out = Vec::with_capacity(heads.len());
        for (id, doc, image) in heads {
            let mut c: Campaign = serde_json::from_str(&doc).map_err(err)?;
            let mut nodes = self
                .conn
                .prepare("SELECT doc FROM campaign_node WHERE campaign = ?1 ORDER BY seq")
                .map_err(err)?;
            c.nodes = nodes
                .query_map([id], |r| r.get::<_, String>(0))
                .map_err(err)?
                .map(|d| {
                    d.map_err(err)
                        .and_then(|d| serde_json::from_str(&d).map_err(err))
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.push((c, image));
        }
        Ok(out)
    }
}
