//! The one-line progress bar of `mixrank train`: position, percentage and ETA when the
//! total number of steps is known (a step budget, or after the first epoch), else the
//! step count alone. Lines, not terminal redraws, so logs and pipes read well.

/// `[#####-----]  50% 500/1000 ETA 1m05s`, or `[step 500]` without a total.
/// `total`: `(steps, exact)`; an upper bound that is not exact (a step budget while the
/// epoch length is not known yet) is shown as `500/≤1000 ETA ≤1m05s`.
/// `(done, seconds)`: steps this process trained and the time they took.
pub fn bar(step: u64, total: Option<(u64, bool)>, (done, seconds): (u64, f64)) -> String {
    const WIDTH: usize = 20;
    let Some((total, exact)) = total.filter(|&(t, _)| t > 0) else { return format!("[step {step}]") };
    let le = if exact { "" } else { "≤" };
    let frac = (step as f64 / total as f64).clamp(0.0, 1.0);
    let filled = (frac * WIDTH as f64).round() as usize;
    let eta = if done > 0 && seconds > 0.0 {
        let left = total.saturating_sub(step) as f64 * seconds / done as f64;
        format!(" ETA {le}{}", duration(left))
    } else {
        String::new()
    };
    format!("[{}{}] {:>3.0}% {step}/{le}{total}{eta}", "#".repeat(filled), "-".repeat(WIDTH - filled), frac * 100.0)
}

/// `45s`, `3m05s`, `2h07m`.
fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_position_percentage_and_eta() {
        assert_eq!(bar(50, Some((200, true)), (50, 10.0)), "[#####---------------]  25% 50/200 ETA 30s");
        assert_eq!(bar(200, Some((100, true)), (10, 1.0)), "[####################] 100% 200/100 ETA 0s");
        assert_eq!(bar(50, Some((200, false)), (50, 10.0)), "[#####---------------]  25% 50/≤200 ETA ≤30s");
        assert_eq!(bar(7, None, (7, 1.0)), "[step 7]");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(7700.0), "2h08m");
    }
}
