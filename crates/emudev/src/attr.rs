//! Attributes: a typed key/value store of device settings ("mac", "mtu", "link_up", ...).
//!
//! The device declares each attribute when it is built, with a type (fixed by its default
//! value), whether the application may change it, and optionally a check on new values. The
//! application reads and writes them with `get_attr`/`set_attr`; the device updates read-only
//! ones with `update_attr`. A change that alters the value emits `AttrChanged`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::error::{AttrError, BuildError};

/// An attribute value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    /// An unsigned number.
    U64(u64),
    /// A flag.
    Bool(bool),
    /// Text.
    Str(String),
    /// Raw bytes (a MAC address, say).
    Bytes(Vec<u8>),
}

impl AttrValue {
    /// The value's type.
    pub fn kind(&self) -> AttrKind {
        match self {
            AttrValue::U64(_) => AttrKind::U64,
            AttrValue::Bool(_) => AttrKind::Bool,
            AttrValue::Str(_) => AttrKind::Str,
            AttrValue::Bytes(_) => AttrKind::Bytes,
        }
    }

    /// The number, if this is a `U64`.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            AttrValue::U64(v) => Some(*v),
            _ => None,
        }
    }

    /// The flag, if this is a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            AttrValue::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The text, if this is a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The bytes, if this is `Bytes`.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            AttrValue::Bytes(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::U64(v) => write!(f, "{v}"),
            AttrValue::Bool(v) => write!(f, "{v}"),
            AttrValue::Str(v) => write!(f, "{v:?}"),
            AttrValue::Bytes(v) => {
                let hex: Vec<String> = v.iter().map(|b| format!("{b:02x}")).collect();
                write!(f, "[{}]", hex.join(":"))
            }
        }
    }
}

/// The type of an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttrKind {
    /// [`AttrValue::U64`].
    U64,
    /// [`AttrValue::Bool`].
    Bool,
    /// [`AttrValue::Str`].
    Str,
    /// [`AttrValue::Bytes`].
    Bytes,
}

impl fmt::Display for AttrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttrKind::U64 => "u64",
            AttrKind::Bool => "bool",
            AttrKind::Str => "string",
            AttrKind::Bytes => "bytes",
        })
    }
}

/// Who may change an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrAccess {
    /// Only the device (`update_attr`) and the initial configuration (`configure`).
    ReadOnly,
    /// The application too (`set_attr`).
    ReadWrite,
}

/// A check on new values: `Err(reason)` refuses the value.
pub type AttrCheck = Arc<dyn Fn(&AttrValue) -> Result<(), String> + Send + Sync>;

/// The declaration of one attribute.
#[derive(Clone)]
pub struct AttrSpec {
    /// Initial value; its type is the attribute's type.
    pub default: AttrValue,
    /// Who may change it.
    pub access: AttrAccess,
    /// Optional check on every new value (and the default).
    pub check: Option<AttrCheck>,
}

impl fmt::Debug for AttrSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttrSpec")
            .field("default", &self.default)
            .field("access", &self.access)
            .field("check", &self.check.is_some())
            .finish()
    }
}

impl AttrSpec {
    /// An attribute the application may change.
    pub fn read_write(default: AttrValue) -> Self {
        AttrSpec {
            default,
            access: AttrAccess::ReadWrite,
            check: None,
        }
    }

    /// An attribute only the device changes.
    pub fn read_only(default: AttrValue) -> Self {
        AttrSpec {
            default,
            access: AttrAccess::ReadOnly,
            check: None,
        }
    }

    /// Adds a check on new values.
    pub fn with_check(
        mut self,
        check: impl Fn(&AttrValue) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.check = Some(Arc::new(check));
        self
    }
}

#[derive(Debug)]
struct Slot {
    spec: AttrSpec,
    value: AttrValue,
}

/// The attribute table of one device (behind the device's lock).
#[derive(Debug, Default)]
pub(crate) struct AttrStore {
    slots: BTreeMap<String, Slot>,
}

impl AttrStore {
    /// Declares `name`; its default must pass its own check.
    pub(crate) fn declare(&mut self, name: &str, spec: AttrSpec) -> Result<(), BuildError> {
        if name.is_empty() || self.slots.contains_key(name) {
            return Err(BuildError::DuplicateAttr(name.to_string()));
        }
        if let Some(check) = &spec.check {
            check(&spec.default).map_err(|reason| BuildError::BadAttrDefault {
                name: name.to_string(),
                reason,
            })?;
        }
        let value = spec.default.clone();
        self.slots.insert(name.to_string(), Slot { spec, value });
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Result<AttrValue, AttrError> {
        self.slots
            .get(name)
            .map(|s| s.value.clone())
            .ok_or_else(|| AttrError::Unknown(name.to_string()))
    }

    /// Checks that `value` may become `name`'s value (`privileged` ignores read-only).
    pub(crate) fn check(
        &self,
        name: &str,
        value: &AttrValue,
        privileged: bool,
    ) -> Result<(), AttrError> {
        let slot = self
            .slots
            .get(name)
            .ok_or_else(|| AttrError::Unknown(name.to_string()))?;
        if !privileged && slot.spec.access == AttrAccess::ReadOnly {
            return Err(AttrError::ReadOnly(name.to_string()));
        }
        let expected = slot.spec.default.kind();
        if value.kind() != expected {
            return Err(AttrError::TypeMismatch {
                name: name.to_string(),
                expected,
                got: value.kind(),
            });
        }
        if let Some(check) = &slot.spec.check {
            check(value).map_err(|reason| AttrError::Rejected {
                name: name.to_string(),
                reason,
            })?;
        }
        Ok(())
    }

    /// Checks and stores; `Ok(true)` when the value changed.
    pub(crate) fn set(
        &mut self,
        name: &str,
        value: AttrValue,
        privileged: bool,
    ) -> Result<bool, AttrError> {
        self.check(name, &value, privileged)?;
        match self.slots.get_mut(name) {
            Some(slot) if slot.value != value => {
                slot.value = value;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(AttrError::Unknown(name.to_string())),
        }
    }

    pub(crate) fn all(&self) -> Vec<(String, AttrValue)> {
        self.slots
            .iter()
            .map(|(k, s)| (k.clone(), s.value.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> AttrStore {
        let mut s = AttrStore::default();
        s.declare(
            "mtu",
            AttrSpec::read_write(AttrValue::U64(1500)).with_check(|v| match v.as_u64() {
                Some(68..=9710) => Ok(()),
                _ => Err("mtu must be 68..=9710".into()),
            }),
        )
        .expect("mtu");
        s.declare("link_up", AttrSpec::read_write(AttrValue::Bool(false)))
            .expect("link_up");
        s.declare("driver", AttrSpec::read_only(AttrValue::Str("none".into())))
            .expect("driver");
        s
    }

    #[test]
    fn get_and_set() {
        let mut s = store();
        assert_eq!(s.get("mtu").expect("mtu"), AttrValue::U64(1500));
        assert_eq!(s.set("mtu", AttrValue::U64(9000), false), Ok(true));
        assert_eq!(s.set("mtu", AttrValue::U64(9000), false), Ok(false));
        assert_eq!(s.get("mtu").expect("mtu").as_u64(), Some(9000));
        assert_eq!(
            s.set("driver", AttrValue::Str("iavf".into()), true),
            Ok(true)
        );
        assert_eq!(s.get("driver").expect("driver").as_str(), Some("iavf"));
        assert_eq!(s.all().len(), 3);
    }

    #[test]
    fn bad_sets_change_nothing() {
        let mut s = store();
        assert_eq!(
            s.set("nope", AttrValue::U64(1), true),
            Err(AttrError::Unknown("nope".into()))
        );
        assert_eq!(
            s.set("driver", AttrValue::Str("x".into()), false),
            Err(AttrError::ReadOnly("driver".into()))
        );
        assert_eq!(
            s.set("link_up", AttrValue::U64(1), false),
            Err(AttrError::TypeMismatch {
                name: "link_up".into(),
                expected: AttrKind::Bool,
                got: AttrKind::U64
            })
        );
        assert!(matches!(
            s.set("mtu", AttrValue::U64(10), false),
            Err(AttrError::Rejected { .. })
        ));
        assert_eq!(s.get("mtu").expect("mtu"), AttrValue::U64(1500));
        assert_eq!(s.get("link_up").expect("link_up"), AttrValue::Bool(false));
        assert!(s.get("nope").is_err());
    }

    #[test]
    fn declarations_are_checked() {
        let mut s = store();
        assert!(matches!(
            s.declare("mtu", AttrSpec::read_only(AttrValue::U64(1))),
            Err(BuildError::DuplicateAttr(_))
        ));
        assert!(matches!(
            s.declare("", AttrSpec::read_only(AttrValue::U64(1))),
            Err(BuildError::DuplicateAttr(_))
        ));
        let bad = AttrSpec::read_write(AttrValue::Bytes(vec![1])).with_check(|v| {
            if v.as_bytes().is_some_and(|b| b.len() == 6) {
                Ok(())
            } else {
                Err("a MAC is 6 bytes".into())
            }
        });
        assert!(matches!(
            s.declare("mac", bad),
            Err(BuildError::BadAttrDefault { .. })
        ));
        assert!(
            format!("{:?}", AttrSpec::read_only(AttrValue::Bool(true))).contains("check: false")
        );
    }

    #[test]
    fn values_display_and_convert() {
        assert_eq!(
            AttrValue::Bytes(vec![0x02, 0, 0xab]).to_string(),
            "[02:00:ab]"
        );
        assert_eq!(AttrValue::Str("a".into()).to_string(), "\"a\"");
        assert_eq!(AttrValue::U64(5).to_string(), "5");
        assert_eq!(AttrValue::Bool(true).to_string(), "true");
        assert_eq!(AttrValue::Bool(true).as_u64(), None);
        assert_eq!(AttrValue::U64(1).as_bool(), None);
        assert_eq!(AttrValue::U64(1).as_str(), None);
        assert_eq!(AttrValue::U64(1).as_bytes(), None);
        assert_eq!(AttrKind::Bytes.to_string(), "bytes");
    }
}
