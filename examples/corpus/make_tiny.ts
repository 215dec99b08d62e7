/**
 * Generates `examples/corpus/tiny.jsonl`: a small, deterministic, template-built English corpus
 * that a tiny Llama can learn quickly (its loss falls within a few hundred steps).
 *
 * Every line is `{"text": "..."}` holding one short paragraph: a little story about people and
 * things, a counting or arithmetic drill, a calendar walk, or a description of an animal. The
 * regular structure makes the text predictable; the random choices keep it varied.
 *
 * Run: `deno run --allow-write examples/corpus/make_tiny.ts [out.jsonl] [targetBytes]`
 */

/** mulberry32: a tiny deterministic 32-bit PRNG. */
function makeRng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const rng = makeRng(20241125);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)];
const chance = (p: number): boolean => rng() < p;
const cap = (s: string): string => s.charAt(0).toUpperCase() + s.slice(1);
const article = (word: string): string => (/^[aeiou]/.test(word) ? "an" : "a");

const NAMES = [
  "Anna",
  "Ben",
  "Clara",
  "David",
  "Ella",
  "Finn",
  "Grace",
  "Henry",
  "Iris",
  "Jack",
  "Lily",
  "Max",
  "Nora",
  "Oscar",
  "Rosa",
  "Sam",
  "Tom",
  "Zoe",
];
const HE_SHE: Record<string, string> = {
  Anna: "she",
  Ben: "he",
  Clara: "she",
  David: "he",
  Ella: "she",
  Finn: "he",
  Grace: "she",
  Henry: "he",
  Iris: "she",
  Jack: "he",
  Lily: "she",
  Max: "he",
  Nora: "she",
  Oscar: "he",
  Rosa: "she",
  Sam: "he",
  Tom: "he",
  Zoe: "she",
};
const COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown", "orange"];
const THINGS = [
  "ball",
  "kite",
  "book",
  "cup",
  "hat",
  "box",
  "bike",
  "boat",
  "lamp",
  "drum",
  "coat",
  "bag",
];
const PLACES = [
  "the park",
  "the garden",
  "the beach",
  "the market",
  "the school",
  "the forest",
  "the river",
  "the library",
  "the farm",
  "the hill",
];
const FOODS = ["apples", "bread", "soup", "cake", "rice", "pears", "cheese", "eggs", "plums"];
const FEELINGS = ["happy", "sad", "tired", "hungry", "calm", "proud", "excited", "sleepy"];
const WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "cloudy", "snowy", "bright"];
const DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
const MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
];
const NUMBERS = [
  "zero",
  "one",
  "two",
  "three",
  "four",
  "five",
  "six",
  "seven",
  "eight",
  "nine",
  "ten",
  "eleven",
  "twelve",
  "thirteen",
  "fourteen",
  "fifteen",
  "sixteen",
  "seventeen",
  "eighteen",
  "nineteen",
  "twenty",
];
interface Animal {
  name: string;
  sound: string;
  home: string;
  food: string;
  legs: number;
  move: string;
}
const ANIMALS: Animal[] = [
  { name: "cat", sound: "meows", home: "house", food: "fish", legs: 4, move: "walks" },
  { name: "dog", sound: "barks", home: "house", food: "meat", legs: 4, move: "runs" },
  { name: "cow", sound: "moos", home: "barn", food: "grass", legs: 4, move: "walks" },
  { name: "duck", sound: "quacks", home: "pond", food: "seeds", legs: 2, move: "swims" },
  { name: "horse", sound: "neighs", home: "stable", food: "hay", legs: 4, move: "runs" },
  { name: "sheep", sound: "bleats", home: "field", food: "grass", legs: 4, move: "walks" },
  { name: "owl", sound: "hoots", home: "tree", food: "mice", legs: 2, move: "flies" },
  { name: "frog", sound: "croaks", home: "pond", food: "flies", legs: 4, move: "jumps" },
  { name: "hen", sound: "clucks", home: "coop", food: "corn", legs: 2, move: "walks" },
  { name: "bee", sound: "buzzes", home: "hive", food: "nectar", legs: 6, move: "flies" },
];

function story(): string {
  const a = pick(NAMES);
  let b = pick(NAMES);
  while (b === a) b = pick(NAMES);
  const color = pick(COLORS);
  const thing = pick(THINGS);
  const place = pick(PLACES);
  const day = pick(DAYS);
  const weather = pick(WEATHER);
  const s: string[] = [];
  s.push(`On ${day}, the day was ${weather}.`);
  s.push(`${a} went to ${place} with ${article(color)} ${color} ${thing}.`);
  if (chance(0.5)) {
    s.push(`At ${place}, ${a} met ${b}.`);
    s.push(`${b} said, "I like your ${color} ${thing}."`);
    if (chance(0.5)) {
      s.push(`${a} gave the ${thing} to ${b}.`);
      s.push(`${cap(HE_SHE[b])} was ${pick(["happy", "proud", "excited"])}.`);
      s.push(`"Thank you, ${a}," said ${b}.`);
    } else {
      s.push(`${a} and ${b} played with the ${thing} until the sun went down.`);
      s.push(`Then they were ${pick(["tired", "hungry", "sleepy"])}, so they went home.`);
    }
  } else {
    s.push(`${cap(HE_SHE[a])} lost the ${thing} near ${pick(PLACES)}.`);
    s.push(`${cap(HE_SHE[a])} was ${pick(["sad", "worried", "upset"])}.`);
    s.push(`${b} helped ${a} look for it.`);
    s.push(`At last they found the ${color} ${thing} under a ${pick(["tree", "bench", "rock"])}.`);
  }
  if (chance(0.6)) {
    const food = pick(FOODS);
    s.push(`For dinner, ${a} ate ${food}.`);
    s.push(`${a} likes ${food} very much.`);
  }
  s.push(`${a} felt ${pick(FEELINGS)} at the end of the day.`);
  return s.join(" ");
}

function counting(): string {
  const start = Math.floor(rng() * 10);
  const len = 4 + Math.floor(rng() * 7);
  const words: string[] = [];
  for (let i = start; i < Math.min(start + len, NUMBERS.length); i++) words.push(NUMBERS[i]);
  const thing = pick(THINGS);
  const s = [`Let us count: ${words.join(", ")}.`];
  const n = 1 + Math.floor(rng() * 9);
  s.push(
    `${pick(NAMES)} has ${NUMBERS[n]} ${thing}${n === 1 ? "" : thing.endsWith("x") ? "es" : "s"}.`,
  );
  const x = Math.floor(rng() * 11);
  const y = Math.floor(rng() * 10);
  s.push(`${cap(NUMBERS[x])} plus ${NUMBERS[y]} is ${NUMBERS[x + y]}.`);
  const big = Math.max(x, y);
  const small = Math.min(x, y);
  s.push(`${cap(NUMBERS[big])} minus ${NUMBERS[small]} is ${NUMBERS[big - small]}.`);
  const p = 1 + Math.floor(rng() * 4);
  const q = 1 + Math.floor(rng() * 5);
  s.push(`${cap(NUMBERS[p])} times ${NUMBERS[q]} is ${NUMBERS[p * q]}.`);
  s.push(`${p} + ${q} = ${p + q}. ${big} - ${small} = ${big - small}.`);
  return s.join(" ");
}

function calendar(): string {
  const d = Math.floor(rng() * 7);
  const m = Math.floor(rng() * 12);
  const s: string[] = [];
  s.push(`Today is ${DAYS[d]}.`);
  s.push(`Tomorrow is ${DAYS[(d + 1) % 7]}.`);
  s.push(`Yesterday was ${DAYS[(d + 6) % 7]}.`);
  s.push(`This month is ${MONTHS[m]}, and next month is ${MONTHS[(m + 1) % 12]}.`);
  if (chance(0.5)) {
    s.push(`The days of the week are ${DAYS.slice(0, 6).join(", ")} and ${DAYS[6]}.`);
  } else {
    const k = 2 + Math.floor(rng() * 4);
    s.push(`After ${MONTHS[m]} come ${MONTHS.slice(m + 1, m + 1 + k).join(", ") || "no more"}.`);
  }
  s.push(`In ${MONTHS[m]} the weather is often ${pick(WEATHER)}.`);
  return s.join(" ");
}

function animal(): string {
  const a = pick(ANIMALS);
  const s: string[] = [];
  s.push(`This is ${article(a.name)} ${a.name}.`);
  s.push(`The ${a.name} ${a.sound}.`);
  s.push(`The ${a.name} lives in a ${a.home}.`);
  s.push(`The ${a.name} eats ${a.food}.`);
  s.push(`The ${a.name} has ${NUMBERS[a.legs]} legs and ${a.move}.`);
  if (chance(0.5)) {
    const who = pick(NAMES);
    s.push(`${who} saw the ${a.name} near ${pick(PLACES)} and said, "Hello, little ${a.name}!"`);
    s.push(`The ${a.name} ${a.sound} back at ${who}.`);
  }
  return s.join(" ");
}

function dialogue(): string {
  const a = pick(NAMES);
  let b = pick(NAMES);
  while (b === a) b = pick(NAMES);
  const food = pick(FOODS);
  const place = pick(PLACES);
  return [
    `${a} asked, "Where are you going, ${b}?"`,
    `${b} said, "I am going to ${place}."`,
    `"Can I come too?" asked ${a}.`,
    `"Yes, you can," said ${b}. "We can eat ${food} there."`,
    `So ${a} and ${b} walked to ${place} together.`,
  ].join(" ");
}

const out = Deno.args[0] ?? new URL("./tiny.jsonl", import.meta.url).pathname;
const target = Number(Deno.args[1] ?? 200_000);
const kinds = [story, story, story, counting, calendar, animal, dialogue];
const lines: string[] = [];
let bytes = 0;
while (bytes < target) {
  const line = JSON.stringify({ text: pick(kinds)() }) + "\n";
  lines.push(line);
  bytes += line.length;
}
Deno.writeTextFileSync(out, lines.join(""));
console.log(`wrote ${lines.length} documents, ${bytes} bytes to ${out}`);
