//! `headroom` (at the top level, in `[[pool]]` or `[defaults]`): spare runners
//! by schedule (`[[headroom]]` periods), `"auto"` (sized from the pool's own
//! demand), or both in one array (`headroom = ["auto", { schedule = ... }]`):
//! the larger count wins.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::ConfigError;
use super::bad;
use super::pool::PoolFile;
use crate::scale::auto_headroom::{AutoSpares, DEFAULT_MAX_SPARES};
use crate::scale::headroom::{HeadroomSpec, Schedule};

/// The `headroom` key as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeadroomFile {
    pub auto: bool,
    pub periods: Vec<HeadroomSpec>,
}

const EXPECTED: &str = "\"auto\", [[headroom]] periods, or an array of both";

impl Serialize for HeadroomFile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut items: Vec<serde_json::Value> = Vec::new();
        if self.auto {
            items.push("auto".into());
        }
        for p in &self.periods {
            items.push(serde_json::to_value(p).map_err(serde::ser::Error::custom)?);
        }
        items.serialize(s)
    }
}

impl<'de> Deserialize<'de> for HeadroomFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeadroomFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HeadroomFile, E> {
                if s == "auto" {
                    Ok(HeadroomFile {
                        auto: true,
                        periods: vec![],
                    })
                } else {
                    Err(E::custom(format!("{s:?}: expected {EXPECTED}")))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HeadroomFile, A::Error> {
                let mut out = HeadroomFile::default();
                while let Some(v) = seq.next_element::<serde_json::Value>()? {
                    match v {
                        serde_json::Value::String(s) if s == "auto" => out.auto = true,
                        serde_json::Value::String(s) => {
                            return Err(de::Error::custom(format!("{s:?}: expected {EXPECTED}")));
                        }
                        v => out
                            .periods
                            .push(HeadroomSpec::deserialize(v).map_err(de::Error::custom)?),
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

/// The pool's schedule and its auto spares (`None`: not auto).
pub(super) fn check(
    p: &PoolFile,
    max_instances: u32,
) -> Result<(Vec<HeadroomSpec>, Option<AutoSpares>), ConfigError> {
    let file = p.headroom.clone().unwrap_or_default();
    let headroom = file.periods;
    Schedule::new(&headroom).map_err(|e| bad("headroom", e.to_string()))?;
    if let Some(h) = headroom.iter().find(|h| h.count > max_instances) {
        return Err(bad(
            "headroom",
            format!(
                "a period wants {} spare runners, above max_instances {max_instances}",
                h.count
            ),
        ));
    }
    let auto = if file.auto {
        let max_spares = p
            .max_spares
            .unwrap_or(DEFAULT_MAX_SPARES.min(max_instances));
        if !(1..=max_instances).contains(&max_spares) {
            return Err(bad(
                "max_spares",
                format!(
                    "{max_spares} is out of range: must be 1 to max_instances ({max_instances})"
                ),
            ));
        }
        Some(AutoSpares { max_spares })
    } else {
        if p.max_spares.is_some() {
            return Err(bad(
                "max_spares",
                "bounds headroom = \"auto\", and this pool's headroom is not auto",
            ));
        }
        None
    };
    Ok((headroom, auto))
}
