//! The keys that defer a run instead of dropping it: `when:` (run conditions),
//! `force_after:` and `blackout:` (quiet hours). The daemon's side is
//! `daemon::conditions`.

use super::walk::{Checker, index};
use crate::config::tree::{Node, Value};
use crate::config::{Blackout, When};

const WHEN_KEYS: &[&str] = &["ac_power", "network", "unmetered", "idle_cpu"];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Checker {
    pub(super) fn when(&mut self, node: &Node, path: &str) -> Option<When> {
        let f = self.fields(
            node,
            path,
            "a mapping {ac_power: true, network: HOST:PORT, unmetered: true, idle_cpu: 50}",
            Some(WHEN_KEYS),
        )?;
        let ac_power = self.with_default(&f, path, "ac_power", false, Checker::boolean);
        let unmetered = self.with_default(&f, path, "unmetered", false, Checker::boolean);
        let network = self.optional(&f, path, "network", |c, n, p| {
            let text = c.non_empty_string(n, p)?;
            match text.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Some(text),
                _ => {
                    c.error(p, n.pos, format!("{text:?} is not HOST:PORT (for example nas.local:8000, the repository server)"));
                    None
                }
            }
        });
        let idle_cpu = self.optional(&f, path, "idle_cpu", |c, n, p| match n.value {
            Value::Int(i) if (1..=100).contains(&i) => Some(i as u8),
            _ => {
                c.type_error(p, n, "a load percentage from 1 to 100");
                None
            }
        });
        Some(When {
            ac_power: ac_power?,
            network: network?,
            unmetered: unmetered?,
            idle_cpu: idle_cpu?,
        })
    }

    pub(super) fn blackout(&mut self, node: &Node, path: &str) -> Option<Vec<Blackout>> {
        let Value::Seq(items) = &node.value else {
            self.type_error(path, node, "a list of windows such as [\"09:00-17:00 mon-fri\"]");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            let Some(text) = self.non_empty_string(item, &p) else {
                ok = false;
                continue;
            };
            match parse_window(&text) {
                Ok(w) => out.push(w),
                Err(e) => {
                    self.error(&p, item.pos, format!("invalid blackout window {text:?}: {e}"));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

/// `HH:MM-HH:MM [DAYS]`, DAYS a comma list of names or ranges (`mon-fri,sun`); every day
/// without.
fn parse_window(text: &str) -> Result<Blackout, String> {
    let mut parts = text.split_whitespace();
    let times = parts.next().ok_or("empty")?;
    let (from, to) = times.split_once('-').ok_or("write it as HH:MM-HH:MM, then the days")?;
    let minute = |t: &str| -> Result<u16, String> {
        let (h, m) = t.split_once(':').ok_or_else(|| format!("{t:?} is not HH:MM"))?;
        let (h, m): (u16, u16) = (
            h.parse().map_err(|_| format!("{t:?} is not HH:MM"))?,
            m.parse().map_err(|_| format!("{t:?} is not HH:MM"))?,
        );
        if h > 24 || m > 59 || (h == 24 && m > 0) {
            return Err(format!("{t:?} is not a time of day"));
        }
        Ok(h * 60 + m)
    };
    let (start, end) = (minute(from)?, minute(to)? % (24 * 60));
    if start == end {
        return Err("it starts and ends at the same time".into());
    }
    let days = match parts.next() {
        None => 0b1111_1110,
        Some(list) => {
            let day = |name: &str| {
                DAYS.iter()
                    .position(|d| name.eq_ignore_ascii_case(d))
                    .map(|i| i as u8 + 1)
                    .ok_or_else(|| format!("{name:?} is not a day (mon, tue, ..., sun)"))
            };
            let mut bits = 0u8;
            for item in list.split(',') {
                let (a, b) = item.split_once('-').unwrap_or((item, item));
                let (a, b) = (day(a)?, day(b)?);
                if a > b {
                    return Err(format!("{item:?} runs backwards: write it from Monday to Sunday"));
                }
                for d in a..=b {
                    bits |= 1 << d;
                }
            }
            bits
        }
    };
    if let Some(extra) = parts.next() {
        return Err(format!("unexpected {extra:?} after the days"));
    }
    Ok(Blackout { text: text.to_string(), start, end, days })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::Zoned {
        text.parse().unwrap()
    }

    #[test]
    fn windows_match_their_days_and_hours_and_may_pass_midnight() {
        let office = parse_window("09:00-17:00 mon-fri").unwrap();
        // 2026-12-02 is a Wednesday.
        assert!(office.contains(&at("2026-12-02T10:00:00+00:00[UTC]")));
        assert!(!office.contains(&at("2026-12-02T17:00:00+00:00[UTC]")));
        assert!(!office.contains(&at("2026-12-05T10:00:00+00:00[UTC]")), "a Saturday");
        let night = parse_window("22:00-06:00 fri").unwrap();
        assert!(night.contains(&at("2026-12-04T23:00:00+00:00[UTC]")));
        assert!(night.contains(&at("2026-12-05T05:59:00+00:00[UTC]")), "Friday's night");
        assert!(!night.contains(&at("2026-12-06T05:00:00+00:00[UTC]")));
        assert!(
            parse_window("18:00-24:00").unwrap().contains(&at("2026-12-06T23:59:00+00:00[UTC]"))
        );
        for bad in [
            "00:00-24:00",
            "9-17",
            "09:00-09:00",
            "09:00-17:00 fri-mon",
            "09:00-17:00 weekdays",
            "25:00-26:00",
        ] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }
}
