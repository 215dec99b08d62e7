/**
 * Chat conversations: their turns, their plain-text template, and their tokens with the mask of
 * the tokens trained on.
 *
 * Template (one line per turn, turns joined by "\n"):
 * ```
 * SYSTEM: <system text>
 * USER: <human / user text>
 * ASSISTANT: <gpt / assistant text>
 * ```
 * Records' turns are parsed by readers.ts's `parseConversation` (roles normalised there); every
 * reader's conversations go through {@link conversationTokens}.
 *
 * Training targets (FastChat's convention, which LightSeq's conversations follow): only the
 * assistant's replies are trained on. Role prefixes ("USER: ", "ASSISTANT: "), the "\n" between
 * turns and every non-assistant turn are ignored labels (-100), and so is the BOS before a
 * conversation; the EOS after it is trained when the last turn is the assistant's (the reply's
 * end, as FastChat trains its "</s>" separator).
 *
 * Tokenisation is piecewise: each prefix and each turn text is encoded on its own, so a token
 * never straddles a trained and an ignored stretch (the whole rendered string can tokenise
 * slightly differently across a boundary; the mask is exact instead).
 *
 * @module
 */

import type { Tokenizer } from "./tokenizer.ts";

/** One turn of a conversation, its role normalised (USER, ASSISTANT, SYSTEM, or upper-cased). */
export interface ChatTurn {
  /** The role as the template prints it. */
  role: string;
  /** The turn's text, verbatim. */
  text: string;
}

/** The template's role of the assistant, whose turns are trained on. */
export const ASSISTANT_ROLE = "ASSISTANT";

/** The text before turn `i`'s text: "\n" between turns, then "ROLE: ". */
function turnPrefix(turn: ChatTurn, i: number): string {
  return `${i > 0 ? "\n" : ""}${turn.role}: `;
}

/** The conversation as plain text (the template above). */
export function conversationText(turns: readonly ChatTurn[]): string {
  return turns.map((t, i) => turnPrefix(t, i) + t.text).join("");
}

/**
 * A conversation's token ids (no BOS/EOS) and, per token, whether it is trained on (1: a token
 * of an assistant's reply) or an ignored label (0).
 */
export function conversationTokens(
  turns: readonly ChatTurn[],
  tokenizer: Pick<Tokenizer, "encode">,
): { ids: number[]; trained: Uint8Array } {
  const ids: number[] = [], trained: number[] = [];
  const add = (text: string, train: boolean) => {
    if (text === "") return;
    for (const id of tokenizer.encode(text)) {
      ids.push(id);
      trained.push(train ? 1 : 0);
    }
  };
  turns.forEach((t, i) => {
    add(turnPrefix(t, i), false);
    add(t.text, t.role === ASSISTANT_ROLE);
  });
  return { ids, trained: Uint8Array.from(trained) };
}

/** Whether the EOS after a conversation is trained on: when the assistant spoke last. */
export function conversationEndTrained(turns: readonly ChatTurn[]): boolean {
  return turns.length > 0 && turns[turns.length - 1].role === ASSISTANT_ROLE;
}
