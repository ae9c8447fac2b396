// Pure logic: "did you mean ...?" for a mistyped key or worker name.

/// The candidate closest to `word` by edit distance (insertions, deletions, substitutions and
/// swaps of two neighbours each count 1), or nil when none is close enough to be a typo: at most
/// 1 edit for words up to 4 characters, 2 up to 8, 3 beyond. Ties go to the first candidate.
public func closestMatch(to word: String, among candidates: some Sequence<String>) -> String? {
    let typed = Array(word.unicodeScalars)
    let allowed = typed.count <= 4 ? 1 : typed.count <= 8 ? 2 : 3
    var best: (candidate: String, distance: Int)? = nil
    for candidate in candidates where candidate != word {
        let distance = editDistance(typed, Array(candidate.unicodeScalars), limit: allowed)
        if distance <= allowed, distance < (best?.distance ?? Int.max) {
            best = (candidate, distance)
        }
    }
    return best?.candidate
}

/// " (did you mean 'x'?)", or "" when nothing is close.
public func didYouMean(_ word: String, among candidates: some Sequence<String>) -> String {
    closestMatch(to: word, among: candidates).map { " (did you mean '\($0)'?)" } ?? ""
}

/// Optimal string alignment distance; anything above `limit` is reported as `limit + 1`, so a
/// long worker name from a peer costs no more than a short one.
func editDistance(_ a: [Unicode.Scalar], _ b: [Unicode.Scalar], limit: Int) -> Int {
    if abs(a.count - b.count) > limit { return limit + 1 }
    if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
    var previous2 = [Int](repeating: 0, count: b.count + 1)
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        var rowMinimum = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            var value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                value = min(value, previous2[j - 2] + 1)
            }
            current[j] = value
            rowMinimum = min(rowMinimum, value)
        }
        if rowMinimum > limit { return limit + 1 }
        (previous2, previous, current) = (previous, current, previous2)
    }
    return previous[b.count]
}
